// A Connect()ed world whose ranks are threads of the test process, rendezvousing through a
// TCPStore on a free loopback port: what the Communicator tests run collectives in.
#pragma once

#include <future>
#include <vector>

#include "dsv3/dist/communicator.h"
#include "test_util.h"

namespace dsv3::test {

// Runs fn(communicator) on every rank of an `n`-rank world and waits for all of them; an
// exception (or a failed rendezvous) on any rank is rethrown here. Rank r gets device r.
template <typename F>
void InThreadWorld(int n, const dist::ConnectOptions& options, F fn) {
  const int port = FreeLoopbackPort();
  std::vector<std::future<void>> ranks;
  for (int r = 0; r < n; ++r) {
    ranks.push_back(std::async(std::launch::async, [=] {
      dist::LaunchInfo l;
      l.rank = r;
      l.world_size = n;
      l.local_rank = r;
      l.local_world_size = n;
      l.master_port = port;
      dist::ConnectOptions o = options;
      o.device_index = r;
      auto comm = dist::Connect(l, o);
      fn(*comm);
    }));
  }
  for (auto& f : ranks) f.get();
}

}  // namespace dsv3::test
