// Console, metrics.jsonl and TensorBoard reporters.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dsv3/common/message_log.h"
#include "dsv3/train/reporter.h"
#include "dsv3/train/tfevents.h"

namespace dsv3::train {
namespace {

using nlohmann::json;

double WallTime() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string Fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

class ConsoleReporter final : public Reporter {
 public:
  void OnStart(const RunInfo& r) override {
    char line[1024];
    std::snprintf(line, sizeof(line), "dsv3-worker %s: rank %d/%d, %s on %s, %d intra-op threads", r.experiment.c_str(),
                  r.rank, r.world_size, r.precision.c_str(), r.device.c_str(), r.threads);
    msg::Info(line);
    std::snprintf(line, sizeof(line), "  parameters %.2fM (%.2fM activated per token), %.3g FLOPs/token",
                  r.parameters / 1e6, r.activated_parameters / 1e6, r.flops_per_token);
    msg::Info(line);
    std::snprintf(line, sizeof(line),
                  "  steps %lld -> %lld, %lld tokens/step (%lld accumulation steps), %.3gB tokens planned",
                  static_cast<long long>(r.start_step), static_cast<long long>(r.train_steps),
                  static_cast<long long>(r.tokens_per_step), static_cast<long long>(r.gradient_accumulation_steps),
                  r.tokens_planned / 1e9);
    msg::Info(line);
    msg::Info("  output " + r.output_dir + ", checkpoints " + r.checkpoint_dir +
              (r.resumed_from.empty() ? "" : ", resumed from " + r.resumed_from) +
              (r.weights_from.empty() ? "" : ", initial weights from " + r.weights_from));
    total_ = r.train_steps;
  }
  void OnMetrics(const StepMetrics& m) override {
    std::ostringstream os;
    os << "step " << m.step << "/" << total_ << " | loss " << Fmt("%.4f", m.Get("loss"));
    os << " (main " << Fmt("%.4f", m.Get("loss_main")) << ", mtp " << Fmt("%.4f", m.Get("loss_mtp")) << ", balance "
       << Fmt("%.2e", m.Get("loss_balance")) << ")";
    os << " | lr " << Fmt("%.2e", m.Get("lr")) << " | gnorm " << Fmt("%.3f", m.Get("grad_norm"));
    os << " | " << Fmt("%.0f", m.Get("tokens_per_s")) << " tok/s | mfu " << Fmt("%.2f", 100 * m.Get("mfu")) << "%";
    os << " | " << Fmt("%.0f", m.Get("step_ms")) << " ms (data " << Fmt("%.0f", m.Get("time_data_ms")) << ", fwd "
       << Fmt("%.0f", m.Get("time_forward_ms")) << ", bwd " << Fmt("%.0f", m.Get("time_backward_ms")) << ", opt "
       << Fmt("%.0f", m.Get("time_optimizer_ms")) << ")";
    os << " | experts max/mean " << Fmt("%.2f", m.Get("expert_load_max_over_mean")) << ", dropped "
       << Fmt("%.1f", 100 * m.Get("expert_dropped_fraction")) << "%";
    for (const auto& [k, v] : m.values)
      if (k == "loss_scale") os << " | scale " << Fmt("%.0f", v);
    msg::Info(os.str());
  }
  void OnEval(const EvalResult& e) override {
    std::ostringstream os;
    os << "eval step " << e.step << " | loss " << Fmt("%.4f", e.loss) << " | ppl " << Fmt("%.2f", e.perplexity);
    for (const auto& [source, loss] : e.per_source_loss) os << " | " << source << " " << Fmt("%.3f", loss);
    msg::Info(os.str());
    msg::Info("  sample: " + json(e.sample_prompt + e.sample).dump());
  }
  void OnCheckpoint(const CheckpointEvent& c) override {
    msg::Info("checkpoint step " + std::to_string(c.step) + " (" + c.reason + ") -> " + c.path + " (" +
              Fmt("%.2f", c.seconds) + " s" + (c.async ? ", writing in the background" : "") + ")");
  }
  void OnMessage(const std::string& m) override { msg::Info(m); }
  void OnEnd(int64_t step, const std::string& message) override {
    msg::Info("finished at step " + std::to_string(step) + ": " + message);
  }

 private:
  int64_t total_ = 0;
};

class JsonlReporter final : public Reporter {
 public:
  explicit JsonlReporter(const std::string& path) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    out_.open(path, std::ios::app);
    if (!out_) throw std::runtime_error("cannot write " + path);
  }
  void OnStart(const RunInfo& r) override {
    Write({{"event", "start"},        {"time", WallTime()},        {"experiment", r.experiment},
           {"parameters", r.parameters}, {"start_step", r.start_step}, {"train_steps", r.train_steps},
           {"world_size", r.world_size}, {"precision", r.precision}, {"resumed_from", r.resumed_from},
           {"weights_from", r.weights_from}});
  }
  void OnMetrics(const StepMetrics& m) override {
    json j = {{"event", "train"}, {"step", m.step}, {"time", WallTime()}};
    for (const auto& [k, v] : m.values) j[k] = std::isfinite(v) ? json(v) : json(nullptr);
    Write(j);
  }
  void OnEval(const EvalResult& e) override {
    json per = json::object();
    for (const auto& [s, l] : e.per_source_loss) per[s] = l;
    Write({{"event", "eval"}, {"step", e.step}, {"time", WallTime()}, {"loss", e.loss}, {"perplexity", e.perplexity},
           {"tokens", e.tokens}, {"per_source_loss", per}, {"sample", e.sample}});
  }
  void OnCheckpoint(const CheckpointEvent& c) override {
    Write({{"event", "checkpoint"}, {"step", c.step}, {"time", WallTime()}, {"path", c.path},
           {"seconds", c.seconds}, {"async", c.async}, {"reason", c.reason}});
  }
  void OnEnd(int64_t step, const std::string& message) override {
    Write({{"event", "end"}, {"step", step}, {"time", WallTime()}, {"message", message}});
  }

 private:
  void Write(const json& j) {
    out_ << j.dump() << "\n";
    out_.flush();
  }
  std::ofstream out_;
};

class TensorBoardReporter final : public Reporter {
 public:
  explicit TensorBoardReporter(const std::string& dir) : writer_(dir) {}
  void OnMetrics(const StepMetrics& m) override {
    const double now = WallTime();
    for (const auto& [k, v] : m.values) writer_.AddScalar("train/" + k, v, m.step, now);
    writer_.Flush();
  }
  void OnEval(const EvalResult& e) override {
    const double now = WallTime();
    writer_.AddScalar("eval/loss", e.loss, e.step, now);
    writer_.AddScalar("eval/perplexity", e.perplexity, e.step, now);
    for (const auto& [s, l] : e.per_source_loss) writer_.AddScalar("eval/loss_" + s, l, e.step, now);
    writer_.Flush();
  }

 private:
  EventFileWriter writer_;
};

}  // namespace

double StepMetrics::Get(const std::string& name) const {
  for (const auto& [k, v] : values)
    if (k == name) return v;
  return std::nan("");
}

std::unique_ptr<Reporter> MakeConsoleReporter() { return std::make_unique<ConsoleReporter>(); }
std::unique_ptr<Reporter> MakeJsonlReporter(const std::string& path) { return std::make_unique<JsonlReporter>(path); }
std::unique_ptr<Reporter> MakeTensorBoardReporter(const std::string& dir) {
  return std::make_unique<TensorBoardReporter>(dir);
}

}  // namespace dsv3::train
