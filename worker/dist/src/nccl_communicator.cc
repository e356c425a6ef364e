// The NCCL backend: NCCL called directly on CUDA tensors, on the legacy default stream that
// LibTorch's kernels use by default, so a collective is ordered with the kernels around it.
// Wait() polls a CUDA event until the collective is done; past the collective timeout, or
// on an asynchronous NCCL error, the communicator is aborted and the error names the
// operation and the rank (instead of hanging in a kernel forever).
#include "backends.h"

#ifdef DSV3_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

namespace dsv3::dist::internal {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t ToNccl(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return ncclFloat32;
    case torch::kHalf: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kDouble: return ncclFloat64;
    case torch::kLong: return ncclInt64;
    case torch::kInt: return ncclInt32;
    case torch::kByte:
    case torch::kBool: return ncclUint8;
    default: throw std::runtime_error(std::string("nccl: unsupported dtype ") + c10::toString(t));
  }
}

ncclRedOp_t ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
    default: return ncclSum;
  }
}

class NcclCommunicator;

class NcclWork final : public Work {
 public:
  NcclWork(NcclCommunicator* comm, std::string op);
  ~NcclWork() override {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  void Wait() override;

 private:
  NcclCommunicator* comm_;
  std::string op_;
  cudaEvent_t event_ = nullptr;
  bool done_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(GroupSpec spec) : spec_(std::move(spec)) {
    Cuda(cudaSetDevice(spec_.options.device_index), "cudaSetDevice");
    ncclUniqueId id;
    if (spec_.rank == 0) {
      Check(ncclGetUniqueId(&id), "get unique id");
      std::vector<uint8_t> bytes(sizeof(id));
      std::memcpy(bytes.data(), &id, sizeof(id));
      spec_.store->set("nccl_id", bytes);
    } else {
      const std::vector<uint8_t> bytes = spec_.store->get("nccl_id");
      if (bytes.size() != sizeof(id)) throw std::runtime_error("nccl: malformed unique id in the store");
      std::memcpy(&id, bytes.data(), sizeof(id));
    }
    Check(ncclCommInitRank(&comm_, spec_.size, id, spec_.rank), "init");
  }
  ~NcclCommunicator() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }

  int rank() const override { return spec_.rank; }
  int size() const override { return spec_.size; }
  const std::string& name() const override { return spec_.name; }
  std::string backend() const override { return "nccl"; }

  WorkHandle AllReduce(torch::Tensor t, ReduceOp op) override {
    Usable("allreduce");
    CountBytes(t);
    Check(ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), ToNccl(t.scalar_type()), ToNccl(op),
                        comm_, stream()),
          "allreduce");
    return std::make_shared<NcclWork>(this, "allreduce");
  }
  WorkHandle ReduceScatter(torch::Tensor out, torch::Tensor in) override {
    Usable("reduce_scatter");
    CountBytes(in);
    torch::Tensor src = in.contiguous();
    Check(ncclReduceScatter(src.data_ptr(), out.data_ptr(), static_cast<size_t>(out.numel()),
                            ToNccl(in.scalar_type()), ncclSum, comm_, stream()),
          "reduce_scatter");
    return std::make_shared<NcclWork>(this, "reduce_scatter");
  }
  WorkHandle AllGather(torch::Tensor out, torch::Tensor in) override {
    Usable("allgather");
    CountBytes(in);
    torch::Tensor src = in.contiguous();
    Check(ncclAllGather(src.data_ptr(), out.data_ptr(), static_cast<size_t>(in.numel()), ToNccl(in.scalar_type()),
                        comm_, stream()),
          "allgather");
    return std::make_shared<NcclWork>(this, "allgather");
  }
  WorkHandle Broadcast(torch::Tensor t, int root) override {
    Usable("broadcast");
    if (rank() == root) CountBytes(t);
    Check(ncclBroadcast(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), ToNccl(t.scalar_type()), root,
                        comm_, stream()),
          "broadcast");
    return std::make_shared<NcclWork>(this, "broadcast");
  }
  WorkHandle AllToAll(torch::Tensor out, torch::Tensor in, const std::vector<int64_t>& out_rows,
                      const std::vector<int64_t>& in_rows) override {
    Usable("alltoall");
    CountBytes(in);
    torch::Tensor src = in.contiguous();
    const int64_t row = src.dim() > 1 ? src.numel() / std::max<int64_t>(src.size(0), 1) : 1;
    const size_t bytes = static_cast<size_t>(row) * src.element_size();
    const auto type = ToNccl(src.scalar_type());
    auto* send = static_cast<char*>(src.data_ptr());
    auto* recv = static_cast<char*>(out.data_ptr());
    Check(ncclGroupStart(), "alltoall");
    for (int p = 0; p < size(); ++p) {
      const auto n_send = static_cast<size_t>(in_rows[static_cast<size_t>(p)] * row);
      const auto n_recv = static_cast<size_t>(out_rows[static_cast<size_t>(p)] * row);
      if (n_send > 0) Check(ncclSend(send, n_send, type, p, comm_, stream()), "alltoall");
      if (n_recv > 0) Check(ncclRecv(recv, n_recv, type, p, comm_, stream()), "alltoall");
      send += static_cast<size_t>(in_rows[static_cast<size_t>(p)]) * bytes;
      recv += static_cast<size_t>(out_rows[static_cast<size_t>(p)]) * bytes;
    }
    Check(ncclGroupEnd(), "alltoall");
    return std::make_shared<NcclWork>(this, "alltoall");
  }
  WorkHandle Send(torch::Tensor t, int peer, int /*tag: NCCL has none*/) override {
    Usable("send");
    CountBytes(t);
    torch::Tensor src = t.contiguous();
    Check(ncclSend(src.data_ptr(), static_cast<size_t>(src.numel()), ToNccl(src.scalar_type()), peer, comm_, stream()),
          "send");
    return std::make_shared<NcclWork>(this, "send");
  }
  WorkHandle Recv(torch::Tensor t, int peer, int /*tag: NCCL has none*/) override {
    Usable("recv");
    Check(ncclRecv(t.data_ptr(), static_cast<size_t>(t.numel()), ToNccl(t.scalar_type()), peer, comm_, stream()),
          "recv");
    return std::make_shared<NcclWork>(this, "recv");
  }
  void Barrier() override {
    torch::Tensor one = torch::ones({1}, torch::TensorOptions().device(torch::kCUDA, spec_.options.device_index));
    AllReduce(one, ReduceOp::kSum)->Wait();
  }
  std::unique_ptr<Communicator> Subgroup(const std::vector<int>& members, const std::string& tag) override {
    return std::make_unique<NcclCommunicator>(SubgroupSpec(spec_, members, tag));
  }

  // After a timeout or an asynchronous error: frees NCCL's resources; later calls fail.
  void Abort() {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  cudaStream_t stream() const { return nullptr; }  // the legacy default stream
  ncclComm_t comm() const { return comm_; }
  const GroupSpec& spec() const { return spec_; }
  double* blocked() { return &blocked_seconds_; }

  void Check(ncclResult_t r, const std::string& op) {
    if (r != ncclSuccess && r != ncclInProgress) {
      throw std::runtime_error(DescribeFailure("nccl", op, *this, ncclGetErrorString(r)));
    }
  }
  void Usable(const std::string& op) {
    if (comm_ == nullptr) throw std::runtime_error(DescribeFailure("nccl", op, *this, "the communicator was aborted"));
  }
  void Cuda(cudaError_t r, const std::string& op) {
    if (r != cudaSuccess) throw std::runtime_error(DescribeFailure("nccl", op, *this, cudaGetErrorString(r)));
  }

 private:
  GroupSpec spec_;
  ncclComm_t comm_ = nullptr;
};

NcclWork::NcclWork(NcclCommunicator* comm, std::string op) : comm_(comm), op_(std::move(op)) {
  comm_->Cuda(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), op_);
  comm_->Cuda(cudaEventRecord(event_, comm_->stream()), op_);
}

void NcclWork::Wait() {
  if (done_) return;
  const auto start = Clock::now();
  const auto deadline = start + comm_->spec().options.collective_timeout;
  while (true) {
    const cudaError_t q = cudaEventQuery(event_);
    if (q == cudaSuccess) break;
    if (q != cudaErrorNotReady) comm_->Cuda(q, op_);
    ncclResult_t async = ncclSuccess;
    if (comm_->comm() != nullptr) ncclCommGetAsyncError(comm_->comm(), &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      comm_->Abort();
      comm_->Check(async, op_);
    }
    if (Clock::now() > deadline) {
      comm_->Abort();
      const double s = std::chrono::duration<double>(comm_->spec().options.collective_timeout).count();
      throw std::runtime_error(DescribeFailure("nccl", op_, *comm_, "timed out after " + std::to_string(s) + " s"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  done_ = true;
  *comm_->blocked() += std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

bool HaveNccl() { return true; }
std::unique_ptr<Communicator> MakeNccl(const GroupSpec& spec) { return std::make_unique<NcclCommunicator>(spec); }

}  // namespace dsv3::dist::internal

#else

namespace dsv3::dist::internal {
bool HaveNccl() { return false; }
std::unique_ptr<Communicator> MakeNccl(const GroupSpec&) {
  throw std::runtime_error("this build has no NCCL backend (nccl.h was not found at build time)");
}
}  // namespace dsv3::dist::internal

#endif
