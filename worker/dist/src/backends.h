// Backend factories behind Connect and Subgroup; private to dsv3_dist.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "dsv3/dist/communicator.h"

namespace dsv3::dist::internal {

struct GroupSpec {
  c10::intrusive_ptr<c10d::Store> store;  // already prefixed for this group
  int rank = 0, size = 1;
  std::string name;
  ConnectOptions options;
  std::string master_addr;  // decides the Gloo transport address on loopback
};

// The spec of a subgroup of `parent` over `members` (ranks of parent), seen from parent's
// rank: its own store prefix, its rank among the members. Throws if that rank is not one.
GroupSpec SubgroupSpec(const GroupSpec& parent, const std::vector<int>& members, const std::string& tag);

std::unique_ptr<Communicator> MakeGloo(const GroupSpec& spec);
std::unique_ptr<Communicator> MakeNccl(const GroupSpec& spec);
bool HaveGloo();
// Wraps a backend so the flight recorder logs its operations (recording_communicator.cc).
std::unique_ptr<Communicator> Recorded(std::unique_ptr<Communicator> inner);
bool HaveNccl();

// "gloo allreduce on rank 1 of group 'world' (2 ranks) failed: <why>"
std::string DescribeFailure(const std::string& backend, const std::string& op, const Communicator& c,
                            const std::string& why);

}  // namespace dsv3::dist::internal
