// The Gloo backend over c10d's ProcessGroupGloo. LibTorch 1.13's Gloo has allreduce,
// list-form allgather, broadcast, barrier and alltoall_base; reduce-scatter is composed here
// (allreduce of a copy, keep this rank's chunk: twice the bytes of a ring reduce-scatter,
// the same result) and the flat all-gather writes into views of the output.
#include "backends.h"
#include "dsv3/common/env.h"

#ifdef DSV3_HAVE_GLOO
#include <chrono>
#include <functional>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

namespace dsv3::dist::internal {
namespace {

using Clock = std::chrono::steady_clock;

class GlooWork final : public Work {
 public:
  GlooWork(c10::intrusive_ptr<c10d::Work> work, std::string op, Communicator* comm, double* blocked,
           std::function<void()> then = {})
      : work_(std::move(work)), op_(std::move(op)), comm_(comm), blocked_(blocked), then_(std::move(then)) {}
  void Wait() override {
    if (done_) return;
    const auto start = Clock::now();
    try {
      work_->wait();
    } catch (const std::exception& e) {
      throw std::runtime_error(DescribeFailure("gloo", op_, *comm_, e.what()));
    }
    if (then_) then_();
    done_ = true;
    *blocked_ += std::chrono::duration<double>(Clock::now() - start).count();
  }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::string op_;
  Communicator* comm_;
  double* blocked_;
  std::function<void()> then_;
  bool done_ = false;
};

c10d::ReduceOp ToC10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
    default: return c10d::ReduceOp::SUM;
  }
}

// LibTorch 1.13's Gloo has no bfloat16. Moving data needs no arithmetic: the same bits as
// fp16 (Gloo copies them, never does arithmetic on them). Reductions run in fp32 and are
// written back.
torch::Tensor AsMovable(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? t.view(torch::kHalf) : t;
}
bool NeedsWideReduce(const torch::Tensor& t) { return t.scalar_type() == torch::kBFloat16; }

bool IsLoopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

class GlooCommunicator final : public Communicator {
 public:
  explicit GlooCommunicator(GroupSpec spec) : spec_(std::move(spec)) {
    auto options = c10d::ProcessGroupGloo::Options::create(spec_.options.collective_timeout);
    if (const char* ifname = std::getenv(env::kGlooSocketIfname); ifname != nullptr && *ifname != '\0') {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (IsLoopback(spec_.master_addr)) {
      // One host: bind where the master is, not wherever the hostname resolves.
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    options->threads = 2;
    try {
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(spec_.store, spec_.rank, spec_.size, options);
    } catch (const std::exception& e) {
      throw std::runtime_error(DescribeFailure("gloo", "connect", *this, e.what()));
    }
  }

  int rank() const override { return spec_.rank; }
  int size() const override { return spec_.size; }
  const std::string& name() const override { return spec_.name; }
  std::string backend() const override { return "gloo"; }

  WorkHandle AllReduce(torch::Tensor t, ReduceOp op) override {
    CountBytes(t);
    const bool wide = NeedsWideReduce(t);
    torch::Tensor buf = wide ? t.to(torch::kFloat) : t;
    std::vector<at::Tensor> v{buf};
    c10d::AllreduceOptions o;
    o.reduceOp = ToC10d(op);
    auto work = Call("allreduce", [&] { return pg_->allreduce(v, o); });
    if (!wide) return Wrap(work, "allreduce");
    return Wrap(work, "allreduce", [t, buf]() mutable { t.copy_(buf); });
  }

  WorkHandle ReduceScatter(torch::Tensor out, torch::Tensor in) override {
    TORCH_CHECK(in.numel() == out.numel() * size(), "ReduceScatter: input of ", in.numel(), " elements for ", size(),
                " outputs of ", out.numel());
    CountBytes(in);
    const auto type = NeedsWideReduce(in) ? torch::kFloat : in.scalar_type();
    torch::Tensor sum = in.reshape({-1}).to(type, /*non_blocking=*/false, /*copy=*/true);
    std::vector<at::Tensor> v{sum};
    auto work = Call("reduce_scatter", [&] { return pg_->allreduce(v); });
    const int64_t n = out.numel(), r = rank();
    return Wrap(work, "reduce_scatter", [out, sum, n, r]() mutable { out.copy_(sum.narrow(0, r * n, n).view_as(out)); });
  }

  WorkHandle AllGather(torch::Tensor out, torch::Tensor in) override {
    TORCH_CHECK(out.numel() == in.numel() * size(), "AllGather: output of ", out.numel(), " elements for ", size(),
                " inputs of ", in.numel());
    CountBytes(in);
    std::vector<std::vector<at::Tensor>> outs(1);
    const torch::Tensor src = AsMovable(in.contiguous()), flat = AsMovable(out).view({-1});
    for (int r = 0; r < size(); ++r) outs[0].push_back(flat.narrow(0, r * src.numel(), src.numel()).view_as(src));
    std::vector<at::Tensor> ins{src};
    return Wrap(Call("allgather", [&] { return pg_->allgather(outs, ins); }), "allgather");
  }

  WorkHandle Broadcast(torch::Tensor t, int root) override {
    if (rank() == root) CountBytes(t);
    std::vector<at::Tensor> v{AsMovable(t)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    return Wrap(Call("broadcast", [&] { return pg_->broadcast(v, o); }), "broadcast");
  }

  WorkHandle AllToAll(torch::Tensor out, torch::Tensor in, const std::vector<int64_t>& out_rows,
                      const std::vector<int64_t>& in_rows) override {
    std::vector<int64_t> o = out_rows, i = in_rows;
    CountBytes(in);
    torch::Tensor src = AsMovable(in.contiguous()), dst = AsMovable(out);
    return Wrap(Call("alltoall", [&] { return pg_->alltoall_base(dst, src, o, i); }), "alltoall");
  }

  WorkHandle Send(torch::Tensor t, int peer, int tag) override {
    // Gloo moves bytes: bfloat16 travels as it is.
    CountBytes(t);
    std::vector<at::Tensor> v{t.contiguous()};
    return Wrap(Call("send", [&] { return pg_->send(v, peer, tag); }), "send");
  }
  WorkHandle Recv(torch::Tensor t, int peer, int tag) override {
    TORCH_CHECK(t.is_contiguous(), "Recv: the destination must be contiguous");
    std::vector<at::Tensor> v{t};
    return Wrap(Call("recv", [&] { return pg_->recv(v, peer, tag); }), "recv");
  }

  void Barrier() override {
    Wrap(Call("barrier", [&] { return pg_->barrier(); }), "barrier")->Wait();
  }

  std::unique_ptr<Communicator> Subgroup(const std::vector<int>& members, const std::string& tag) override {
    return std::make_unique<GlooCommunicator>(SubgroupSpec(spec_, members, tag));
  }

 private:
  template <typename F>
  c10::intrusive_ptr<c10d::Work> Call(const char* op, F&& f) {
    try {
      return f();
    } catch (const std::exception& e) {
      throw std::runtime_error(DescribeFailure("gloo", op, *this, e.what()));
    }
  }
  WorkHandle Wrap(c10::intrusive_ptr<c10d::Work> w, const char* op, std::function<void()> then = {}) {
    return std::make_shared<GlooWork>(std::move(w), op, this, &blocked_seconds_, std::move(then));
  }

  GroupSpec spec_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

}  // namespace

bool HaveGloo() { return true; }
std::unique_ptr<Communicator> MakeGloo(const GroupSpec& spec) { return std::make_unique<GlooCommunicator>(spec); }

}  // namespace dsv3::dist::internal

#else

namespace dsv3::dist::internal {
bool HaveGloo() { return false; }
std::unique_ptr<Communicator> MakeGloo(const GroupSpec&) {
  throw std::runtime_error("this build has no Gloo backend (c10d's Gloo headers were not found)");
}
}  // namespace dsv3::dist::internal

#endif
