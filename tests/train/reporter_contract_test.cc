// The Reporter contract: every reporter the trainer can be given (console, JSONL,
// TensorBoard, and dsv3-worker's controller reporter where gRPC is built) passes the same
// typed tests. Each kind reads back what it recorded — the console's printed lines, the
// JSONL file, the TensorBoard event file, what an in-process WorkerReports service received —
// and the training loss of each step and the eval loss must come back with their steps, to
// the precision of the format; a non-finite value must not break the record stream.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dsv3/common/message_log.h"
#include "dsv3/train/reporter.h"
#include "dsv3/train/tfevents.h"
#include "test_util.h"

#ifdef DSV3_HAVE_GRPC
#include <grpcpp/grpcpp.h>

#include <mutex>

#include "controller_reporter.h"
#include "dsv3/common/env.h"
#include "dsv3/v1/worker.grpc.pb.h"
#endif

namespace dsv3::train {
namespace {

namespace fs = std::filesystem;

// One value read back: "train/loss" or "eval/loss" at a step.
struct Record {
  std::string name;
  int64_t step;
  double value;
};

struct ConsoleKind {
  static std::string Name() { return "console"; }
  static double Tolerance() { return 1e-4; }  // printed with 4 decimals
  static std::unique_ptr<Reporter> Make(const fs::path&) { return MakeConsoleReporter(); }
  static std::vector<Record> Read(const fs::path&, const std::string& printed) {
    std::vector<Record> out;
    std::istringstream lines(printed);
    const std::regex train(R"(^step (\d+)/\d+ \| loss (\S+))"), eval(R"(^eval step (\d+) \| loss (\S+))");
    for (std::string stamped; std::getline(lines, stamped);) {
      // Each line starts with its time, which dsv3d reads off (message_log.h).
      const msg::StampedLine parts = msg::SplitLogStamp(stamped);
      if (!parts.unix_ms) continue;
      const std::string line(parts.text);
      std::smatch m;
      if (std::regex_search(line, m, train)) out.push_back({"train/loss", std::stoll(m[1]), std::stod(m[2])});
      if (std::regex_search(line, m, eval)) out.push_back({"eval/loss", std::stoll(m[1]), std::stod(m[2])});
    }
    return out;
  }
};

struct JsonlKind {
  static std::string Name() { return "jsonl"; }
  static double Tolerance() { return 0; }
  static std::unique_ptr<Reporter> Make(const fs::path& dir) { return MakeJsonlReporter((dir / "metrics.jsonl").string()); }
  static std::vector<Record> Read(const fs::path& dir, const std::string&) {
    std::vector<Record> out;
    std::ifstream in(dir / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      const std::string event = j.at("event");
      if (event != "train" && event != "eval") continue;
      const double v = j.at("loss").is_null() ? std::numeric_limits<double>::quiet_NaN() : j.at("loss").get<double>();
      out.push_back({event + "/loss", j.at("step").get<int64_t>(), v});
    }
    return out;
  }
};

// Reads one protobuf varint at `at`.
uint64_t Varint(const std::string& s, size_t& at) {
  uint64_t v = 0;
  for (int shift = 0; at < s.size(); shift += 7) {
    const auto b = static_cast<unsigned char>(s[at++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) break;
  }
  return v;
}

struct TensorBoardKind {
  static std::string Name() { return "tensorboard"; }
  static double Tolerance() { return 1e-6; }  // simple_value is a float
  static std::unique_ptr<Reporter> Make(const fs::path& dir) { return MakeTensorBoardReporter((dir / "tb").string()); }
  // Event { step = 2 (varint); summary = 5 { value = 1 { tag = 1; simple_value = 2 (fixed32) } } }.
  static std::vector<Record> Read(const fs::path& dir, const std::string&) {
    std::vector<Record> out;
    for (const auto& f : fs::directory_iterator(dir / "tb")) {
      for (const std::string& e : ReadRecords(f.path().string())) {
        int64_t step = 0;
        for (size_t at = 0; at < e.size();) {
          const uint64_t key = Varint(e, at);
          const uint64_t field = key >> 3, wire = key & 7;
          if (wire == 1) {
            at += 8;
          } else if (wire == 0) {
            const uint64_t v = Varint(e, at);
            if (field == 2) step = static_cast<int64_t>(v);
          } else if (wire == 2) {
            const size_t len = Varint(e, at);
            if (field == 5) {  // summary > value > (tag, simple_value)
              const std::string summary = e.substr(at, len);
              size_t s = 0;
              (void)Varint(summary, s);
              const size_t vlen = Varint(summary, s);
              const std::string value = summary.substr(s, vlen);
              size_t v = 0;
              (void)Varint(value, v);
              const size_t tlen = Varint(value, v);
              const std::string tag = value.substr(v, tlen);
              v += tlen + 1;  // the simple_value key
              float x;
              std::memcpy(&x, value.data() + v, 4);
              if (tag == "train/loss" || tag == "eval/loss") out.push_back({tag, step, x});
            }
            at += len;
          } else {
            at += 4;
          }
        }
      }
    }
    return out;
  }
};

#ifdef DSV3_HAVE_GRPC
// dsv3d's side of the reports, in process: keeps every metric and evaluation it is sent.
class FakeWorkerReports final : public v1::WorkerReports::Service {
 public:
  grpc::Status RegisterRank(grpc::ServerContext*, const v1::RegisterRankRequest*,
                            v1::RegisterRankResponse* resp) override {
    resp->set_heartbeat_interval_ms(100);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*, v1::HeartbeatResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status ReportMetrics(grpc::ServerContext*, const v1::ReportMetricsRequest* req, v1::Ack*) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& s : req->samples()) {
      if (s.name() == "loss") records_.push_back({"train/loss", s.step(), s.value()});
    }
    return grpc::Status::OK;
  }
  grpc::Status ReportEvaluation(grpc::ServerContext*, const v1::ReportEvaluationRequest* req, v1::Ack*) override {
    std::lock_guard<std::mutex> lock(mu_);
    records_.push_back({"eval/loss", req->step(), req->loss()});
    return grpc::Status::OK;
  }
  std::vector<Record> Records() {
    std::lock_guard<std::mutex> lock(mu_);
    return records_;
  }

 private:
  std::mutex mu_;
  std::vector<Record> records_;
};

// The controller reporter as dsv3-worker runs it: made from the launcher's environment,
// finished (its queue flushed) when the run ends.
struct ControllerKind {
  static std::string Name() { return "controller"; }
  static double Tolerance() { return 0; }  // doubles on the wire
  static std::unique_ptr<Reporter> Make(const fs::path&) {
    service = std::make_unique<FakeWorkerReports>();
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service.get());
    server = builder.BuildAndStart();
    setenv(env::kController, ("127.0.0.1:" + std::to_string(port)).c_str(), 1);
    setenv(env::kJobId, "1", 1);
    setenv(env::kAttempt, "1", 1);
    setenv(env::kJobCredential, "secret", 1);
    std::unique_ptr<worker::ControllerReporter> r = worker::MakeControllerReporterFromEnv(0, 1);
    unsetenv(env::kController);
    return std::make_unique<Finishing>(std::move(r));
  }
  static std::vector<Record> Read(const fs::path&, const std::string&) {
    std::vector<Record> out = service->Records();
    server->Shutdown();
    server.reset();
    service.reset();
    return out;
  }

  // Forwards to the controller reporter and, at the end of the run, finishes it as
  // dsv3-worker does.
  class Finishing final : public Reporter {
   public:
    explicit Finishing(std::unique_ptr<worker::ControllerReporter> r) : r_(std::move(r)) {}
    ~Finishing() override { r_->Finish(true, false, step_, "completed"); }
    void OnStart(const RunInfo& i) override { r_->OnStart(i); }
    void OnMetrics(const StepMetrics& m) override { r_->OnMetrics(m); }
    void OnEval(const EvalResult& e) override { r_->OnEval(e); }
    void OnCheckpoint(const CheckpointEvent& c) override { r_->OnCheckpoint(c); }
    void OnMessage(const std::string& m) override { r_->OnMessage(m); }
    void OnEnd(int64_t step, const std::string& m) override {
      step_ = step;
      r_->OnEnd(step, m);
    }

   private:
    std::unique_ptr<worker::ControllerReporter> r_;
    int64_t step_ = 0;
  };

  static inline std::unique_ptr<FakeWorkerReports> service;
  static inline std::unique_ptr<grpc::Server> server;
};
#endif

template <typename Kind>
class ReporterContract : public ::testing::Test {
 protected:
  // Runs a short run's events through a fresh reporter and reads back what it recorded.
  std::vector<Record> Report(const std::vector<double>& train_losses, double eval_loss) {
    ::testing::internal::CaptureStdout();
    {
      auto r = Kind::Make(dir_.path());
      RunInfo info;
      info.experiment = "contract";
      info.train_steps = static_cast<int64_t>(train_losses.size());
      info.precision = "fp32";
      info.device = "cpu";
      r->OnStart(info);
      for (size_t i = 0; i < train_losses.size(); ++i) {
        StepMetrics m;
        m.step = static_cast<int64_t>(i + 1);
        m.values = {{"loss", train_losses[i]}, {"loss_main", train_losses[i]}, {"lr", 1e-3}, {"grad_norm", 0.5}};
        r->OnMetrics(m);
      }
      EvalResult e;
      e.step = static_cast<int64_t>(train_losses.size());
      e.loss = eval_loss;
      e.perplexity = std::exp(eval_loss);
      e.per_source_loss = {{"web", eval_loss}};
      r->OnEval(e);
      r->OnCheckpoint({e.step, (dir_.path() / "checkpoint_2").string(), 0.1, false, "final"});
      r->OnMessage("a note");
      r->OnEnd(e.step, "completed");
    }  // destroyed: flushed and closed
    return Kind::Read(dir_.path(), ::testing::internal::GetCapturedStdout());
  }
  test::TempDir dir_;
};

#ifdef DSV3_HAVE_GRPC
using Kinds = ::testing::Types<ConsoleKind, JsonlKind, TensorBoardKind, ControllerKind>;
#else
using Kinds = ::testing::Types<ConsoleKind, JsonlKind, TensorBoardKind>;
#endif
TYPED_TEST_SUITE(ReporterContract, Kinds, test::NamedByType);

TYPED_TEST(ReporterContract, EveryStepsLossAndTheEvalLossComeBackWithTheirSteps) {
  const std::vector<Record> got = this->Report({4.875, 3.25}, 2.0625);
  ASSERT_EQ(got.size(), 3u);
  const std::vector<Record> want = {{"train/loss", 1, 4.875}, {"train/loss", 2, 3.25}, {"eval/loss", 2, 2.0625}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].name, want[i].name);
    EXPECT_EQ(got[i].step, want[i].step);
    EXPECT_NEAR(got[i].value, want[i].value, TypeParam::Tolerance() * std::abs(want[i].value) + 1e-12);
  }
}

TYPED_TEST(ReporterContract, ANonFiniteLossIsRecordedAndTheStreamGoesOn) {
  const std::vector<Record> got = this->Report({std::numeric_limits<double>::quiet_NaN(), 1.5}, 1.25);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_TRUE(std::isnan(got[0].value));
  EXPECT_EQ(got[1].step, 2);
  EXPECT_NEAR(got[1].value, 1.5, TypeParam::Tolerance() * 1.5 + 1e-12);
  EXPECT_NEAR(got[2].value, 1.25, TypeParam::Tolerance() * 1.25 + 1e-12);
}

}  // namespace
}  // namespace dsv3::train
