// Collectives between the ranks of a job, behind one interface with two backends:
//   gloo  CPU tensors, c10d's ProcessGroupGloo (Debian's libgloo), with the operations
//         LibTorch 1.13's Gloo lacks (reduce-scatter, flat all-gather) composed from those
//         it has;
//   nccl  CUDA tensors, NCCL called directly (compiled where nccl.h is found; a clear error
//         where this LibTorch has no CUDA).
// Ranks find each other through a TCPStore on the master (Connect). Every operation returns
// a Work; Wait() blocks until the result is in place and throws an error naming the
// operation, the group and the rank when it fails or times out. Operations on one
// communicator must be issued in the same order on every member.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "dsv3/dist/launch.h"

namespace dsv3::dist {

enum class ReduceOp { kSum, kMax, kMin };

class Work {
 public:
  virtual ~Work() = default;
  virtual void Wait() = 0;
};
using WorkHandle = std::shared_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "world", or the subgroup's tag
  virtual std::string backend() const = 0;

  // In place: t = op over ranks of t.
  virtual WorkHandle AllReduce(torch::Tensor t, ReduceOp op = ReduceOp::kSum) = 0;
  // in.numel() == size() * out.numel(): out = the sum over ranks of in's chunk rank().
  virtual WorkHandle ReduceScatter(torch::Tensor out, torch::Tensor in) = 0;
  // out.numel() == size() * in.numel(): out = every rank's `in`, in rank order.
  virtual WorkHandle AllGather(torch::Tensor out, torch::Tensor in) = 0;
  virtual WorkHandle Broadcast(torch::Tensor t, int root) = 0;
  // Rows (dim 0) of `in` go to ranks by in_rows (one count per rank); `out` receives
  // out_rows[r] rows from rank r, in rank order.
  virtual WorkHandle AllToAll(torch::Tensor out, torch::Tensor in, const std::vector<int64_t>& out_rows,
                              const std::vector<int64_t>& in_rows) = 0;
  // Point to point (pipeline stages): `t` to rank `peer` of this communicator, or into `t`
  // (contiguous, of the sender's shape and dtype) from `peer`. Between two ranks, sends and
  // receives of one tag pair up in the order they are issued (Gloo keeps tags apart; NCCL
  // has none: there every message between two ranks pairs up in issue order).
  virtual WorkHandle Send(torch::Tensor t, int peer, int tag = 0) = 0;
  virtual WorkHandle Recv(torch::Tensor t, int peer, int tag = 0) = 0;
  virtual void Barrier() = 0;

  // A communicator over `members` (ranks of this one, ascending), made by each member with
  // the same list and tag; non-members do not call.
  virtual std::unique_ptr<Communicator> Subgroup(const std::vector<int>& members, const std::string& tag) = 0;

  // Time this process spent blocked in Wait() and Barrier(): communication not hidden
  // behind compute. Cumulative seconds.
  virtual double blocked_seconds() const { return blocked_seconds_; }
  // Bytes of the tensors this process handed to operations on this communicator (each
  // collective's input, each send's tensor): the traffic the caller asked for, before the
  // backend's algorithm multiplies it. Cumulative.
  virtual double bytes_sent() const { return bytes_sent_; }

 protected:
  double blocked_seconds_ = 0;
  double bytes_sent_ = 0;
  void CountBytes(const torch::Tensor& t) { bytes_sent_ += static_cast<double>(t.numel()) * t.element_size(); }
};

// The backend for a config's distributed.backend on this device: "gloo", or "nccl" on CUDA;
// "deepspeed" (our ZeRO) picks nccl on CUDA and gloo on the CPU. Throws naming the field
// when the build or device cannot do it.
std::string ResolveBackend(const std::string& configured, bool cuda);

struct ConnectOptions {
  std::string backend = "gloo";
  std::chrono::milliseconds rendezvous_timeout{std::chrono::minutes(5)};
  std::chrono::milliseconds collective_timeout{std::chrono::minutes(10)};
  int device_index = 0;  // nccl: the CUDA device of this rank
};

// Rendezvous through a TCPStore on launch.master_addr:master_port (rank 0 hosts it unless
// the launcher's agent does), then builds the world communicator. Throws when ranks do not
// all arrive within rendezvous_timeout, naming the missing ones.
std::unique_ptr<Communicator> Connect(const LaunchInfo& launch, const ConnectOptions& options);

// The communicator of a one-rank job: every collective is the identity.
std::unique_ptr<Communicator> MakeSelfCommunicator();

}  // namespace dsv3::dist
