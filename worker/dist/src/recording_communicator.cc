// The flight recorder's view of a communicator: a decorator around every backend that logs
// each operation into FlightRecorder (enter, wait, end) and applies DSV3_FAULT's
// skip_collective. Connect wraps the world; Subgroup wraps what it makes.
#include <cstdio>
#include <sstream>

#include "backends.h"
#include "dsv3/common/message_log.h"
#include "dsv3/dist/faults.h"
#include "dsv3/dist/flight_recorder.h"

namespace dsv3::dist::internal {
namespace {

// PyTorch's names (float32, bfloat16, int64), not c10's (Float, BFloat16, Long).
const char* DtypeName(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return "float32";
    case c10::ScalarType::Double: return "float64";
    case c10::ScalarType::Half: return "float16";
    case c10::ScalarType::BFloat16: return "bfloat16";
    case c10::ScalarType::Long: return "int64";
    case c10::ScalarType::Int: return "int32";
    case c10::ScalarType::Short: return "int16";
    case c10::ScalarType::Char: return "int8";
    case c10::ScalarType::Byte: return "uint8";
    case c10::ScalarType::Bool: return "bool";
    default: return c10::toString(t);
  }
}

std::string TensorText(const torch::Tensor& t) {
  std::ostringstream s;
  s << DtypeName(t.scalar_type()) << "[";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? "," : "") << t.size(d);
  s << "]";
  return s.str();
}

double TensorBytes(const torch::Tensor& t) { return static_cast<double>(t.numel()) * static_cast<double>(t.element_size()); }

// Blocks in `wait` with operation `seq` of `group` recorded as waited in, then ended.
template <class Wait>
void RecordWait(int group, uint64_t seq, Wait wait) {
  FlightRecorder& fr = FlightRecorder::Get();
  fr.WaitStarted(group, seq);
  try {
    wait();
  } catch (...) {
    fr.Ended(group, seq, OpState::kFailed);
    throw;
  }
  fr.Ended(group, seq, OpState::kCompleted);
}

class RecordedWork final : public Work {
 public:
  RecordedWork(WorkHandle inner, int group, uint64_t seq) : inner_(std::move(inner)), group_(group), seq_(seq) {}
  void Wait() override {
    RecordWait(group_, seq_, [this] { inner_->Wait(); });
  }

 private:
  WorkHandle inner_;
  int group_;
  uint64_t seq_;
};

class SkippedWork final : public Work {
 public:
  void Wait() override {}
};

class RecordingCommunicator final : public Communicator {
 public:
  explicit RecordingCommunicator(std::unique_ptr<Communicator> inner)
      : inner_(std::move(inner)),
        group_(FlightRecorder::Get().AddGroup(inner_->name(), inner_->size(), inner_->rank())) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  std::string backend() const override { return inner_->backend(); }
  double blocked_seconds() const override { return inner_->blocked_seconds(); }
  double bytes_sent() const override { return inner_->bytes_sent(); }

  WorkHandle AllReduce(torch::Tensor t, ReduceOp op) override {
    return Run("allreduce", t, "", [&] { return inner_->AllReduce(t, op); });
  }
  WorkHandle ReduceScatter(torch::Tensor out, torch::Tensor in) override {
    return Run("reduce_scatter", in, "", [&] { return inner_->ReduceScatter(out, in); });
  }
  WorkHandle AllGather(torch::Tensor out, torch::Tensor in) override {
    return Run("allgather", in, "", [&] { return inner_->AllGather(out, in); });
  }
  WorkHandle Broadcast(torch::Tensor t, int root) override {
    return Run("broadcast", t, "root " + std::to_string(root), [&] { return inner_->Broadcast(t, root); });
  }
  WorkHandle AllToAll(torch::Tensor out, torch::Tensor in, const std::vector<int64_t>& out_rows,
                      const std::vector<int64_t>& in_rows) override {
    return Run("alltoall", in, "", [&] { return inner_->AllToAll(out, in, out_rows, in_rows); });
  }
  WorkHandle Send(torch::Tensor t, int peer, int tag) override {
    return Run("send", t, "to " + std::to_string(peer), [&] { return inner_->Send(t, peer, tag); });
  }
  WorkHandle Recv(torch::Tensor t, int peer, int tag) override {
    return Run("recv", t, "from " + std::to_string(peer), [&] { return inner_->Recv(t, peer, tag); });
  }
  void Barrier() override {
    if (Skipped()) return;
    const uint64_t seq = FlightRecorder::Get().Enter(group_, "barrier", "", 0, "");
    RecordWait(group_, seq, [this] { inner_->Barrier(); });
  }
  std::unique_ptr<Communicator> Subgroup(const std::vector<int>& members, const std::string& tag) override {
    return std::make_unique<RecordingCommunicator>(inner_->Subgroup(members, tag));
  }

 private:
  template <class Issue>
  WorkHandle Run(const char* op, const torch::Tensor& t, const std::string& peers, Issue issue) {
    FlightRecorder& fr = FlightRecorder::Get();
    if (Skipped()) return std::make_shared<SkippedWork>();
    const uint64_t seq = fr.Enter(group_, op, TensorText(t), TensorBytes(t), peers);
    WorkHandle inner;
    try {
      inner = issue();
    } catch (...) {
      fr.Ended(group_, seq, OpState::kFailed);
      throw;
    }
    return std::make_shared<RecordedWork>(std::move(inner), group_, seq);
  }

  // DSV3_FAULT's skip_collective: the operation this rank would issue next is not issued
  // nor recorded, as a rank that never reached it (its peers wait in it).
  bool Skipped() {
    ++issued_;
    if (!Faults::Get().SkipCollective(name(), issued_)) return false;
    msg::Warning("DSV3_FAULT: skipping operation #" + std::to_string(issued_) + " of group " + name());
    return true;
  }

  std::unique_ptr<Communicator> inner_;
  const int group_;
  uint64_t issued_ = 0;  // operations asked of this group, skipped ones included
};

}  // namespace

std::unique_ptr<Communicator> Recorded(std::unique_ptr<Communicator> inner) {
  return std::make_unique<RecordingCommunicator>(std::move(inner));
}

}  // namespace dsv3::dist::internal
