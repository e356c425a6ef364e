#include "http/prometheus.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "dsv3/common/build_info.h"
#include "http/process_metrics.h"

namespace dsv3::server {
namespace {

using prometheus::Labels;

constexpr int64_t kRecentMs = 3600 * 1000;

// A metric the trainer reports, exported per job under a Prometheus name.
struct JobGauge {
  const char* series;  // trainer metric name
  const char* name;
  const char* help;
};

constexpr JobGauge kJobGauges[] = {
    {"loss", "dsv3_job_loss", "Training loss (main + MTP + balance) at the latest logged step."},
    {"lr", "dsv3_job_learning_rate", "Learning rate at the latest logged step."},
    {"tokens_per_s", "dsv3_job_tokens_per_second", "Training throughput over the last log interval."},
    {"mfu", "dsv3_job_mfu_ratio", "Model FLOPs utilization (0..1) over the last log interval."},
    {"grad_norm", "dsv3_job_grad_norm", "Gradient norm before clipping."},
    {"expert_load_max_over_mean", "dsv3_job_expert_load_imbalance_ratio",
     "Worst MoE layer's max expert load over the mean load (1 = balanced)."},
};

prometheus::Family<prometheus::Gauge>& Gauges(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}
prometheus::Family<prometheus::Counter>& Counters(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}

// The jobs the page shows: every job not ended (however old), then those ended within the
// hour among the 200 newest.
std::vector<JobRecord> JobsOnThePage(const JobStore& store, int64_t now) {
  std::vector<JobRecord> jobs = store.ActiveJobs();
  JobFilter ended;
  ended.states = {JobState::kCompleted, JobState::kFailed, JobState::kCanceled};
  ended.limit = 200;
  for (JobRecord& j : store.ListJobs(ended)) {
    if (now - j.finished_ms <= kRecentMs) jobs.push_back(std::move(j));
  }
  return jobs;
}

void AddJobMetrics(prometheus::Registry& r, const JobStore& store, const JobManager& manager) {
  std::vector<prometheus::Family<prometheus::Gauge>*> trained;
  for (const auto& g : kJobGauges) trained.push_back(&Gauges(r, g.name, g.help));
  auto& step = Gauges(r, "dsv3_job_step", "Latest training step reported.");
  auto& total = Gauges(r, "dsv3_job_total_steps", "training.train_steps of the job.");
  auto& tokens = Counters(r, "dsv3_job_tokens_trained_total",
                          "Tokens trained so far (goes back to the checkpoint's count when the job restarts).");
  auto& val = Gauges(r, "dsv3_job_val_loss", "Latest held-out loss.");
  auto& ckpt_step = Gauges(r, "dsv3_job_last_checkpoint_step", "Step of the newest checkpoint.");
  auto& ckpt_time = Gauges(r, "dsv3_job_last_checkpoint_timestamp_seconds",
                           "When the newest checkpoint was written (seconds since the epoch).");
  auto& interval = Gauges(r, "dsv3_job_checkpoint_interval_steps",
                          "training.save_interval of the job (absent when it saves no interval checkpoints).");
  auto& started = Gauges(r, "dsv3_job_start_timestamp_seconds", "When the job's first attempt started.");
  auto& restarts = Counters(r, "dsv3_job_restarts_total", "Restarts of the job so far.");
  auto& state = Gauges(r, "dsv3_job_state", "1 for the job's current state, 0 for the others.");
  auto& rank_step = Gauges(r, "dsv3_rank_step_seconds", "Wall time of the rank's last training step.");
  auto& rank_busy =
      Gauges(r, "dsv3_rank_busy_seconds", "Of the rank's last step, the time not spent waiting for its peers.");
  auto& straggler = Gauges(r, "dsv3_rank_straggler",
                           "1 when the watchdog flagged the rank as slower than the median of the job's ranks.");
  for (const JobRecord& j : JobsOnThePage(store, NowMs())) {
    const Labels labels = {{"job_id", std::to_string(j.id)}, {"job_name", j.name}};
    const JobProgress p = manager.Progress(j);
    for (size_t i = 0; i < std::size(kJobGauges); ++i) {
      auto it = p.latest.find(kJobGauges[i].series);
      if (it != p.latest.end()) trained[i]->Add(labels).Set(it->second);
    }
    step.Add(labels).Set(static_cast<double>(p.step));
    total.Add(labels).Set(static_cast<double>(j.total_steps));
    if (auto it = p.latest.find("tokens_seen"); it != p.latest.end()) tokens.Add(labels).Increment(it->second);
    if (p.val_loss) val.Add(labels).Set(*p.val_loss);
    if (!p.last_checkpoint.empty()) {
      ckpt_step.Add(labels).Set(static_cast<double>(p.last_checkpoint_step));
      if (p.last_checkpoint_ms > 0) ckpt_time.Add(labels).Set(static_cast<double>(p.last_checkpoint_ms) / 1000.0);
    }
    if (j.plan.save_interval > 0) interval.Add(labels).Set(static_cast<double>(j.plan.save_interval));
    if (j.started_ms > 0) started.Add(labels).Set(static_cast<double>(j.started_ms) / 1000.0);
    restarts.Add(labels).Increment(j.restarts);
    for (int s = 1; s <= 7; ++s) {
      Labels with_state = labels;
      with_state["state"] = JobStateName(static_cast<JobState>(s));
      state.Add(with_state).Set(static_cast<int>(j.state) == s ? 1 : 0);
    }
    if (IsTerminal(j.state)) continue;
    for (const RankView& v : p.ranks) {
      if (v.step_seconds <= 0) continue;
      Labels rank = labels;
      rank["rank"] = std::to_string(v.rank);
      rank_step.Add(rank).Set(v.step_seconds);
      rank_busy.Add(rank).Set(v.busy_seconds);
      straggler.Add(rank).Set(v.straggler ? 1 : 0);
    }
  }
}

void AddControllerMetrics(prometheus::Registry& r, const JobStore& store, const JobManager& manager,
                          const Allocator& allocator) {
  const auto counts = store.CountByState();
  auto& jobs = Gauges(r, "dsv3_jobs", "Jobs in the store by state.");
  for (int s = 1; s <= 7; ++s) {
    auto it = counts.find(static_cast<JobState>(s));
    jobs.Add({{"state", JobStateName(static_cast<JobState>(s))}})
        .Set(it == counts.end() ? 0 : static_cast<double>(it->second));
  }
  Gauges(r, "dsv3_queue_length", "Jobs waiting for slots.").Add({}).Set(manager.QueueLength());
  Counters(r, "dsv3_restarts_total", "Restarts of every job in the store.")
      .Add({})
      .Increment(static_cast<double>(store.TotalRestarts()));
  const Labels alloc = {{"allocator", allocator.Name()}};
  const int slots = allocator.TotalSlots();
  Gauges(r, "dsv3_slots", "Slots (rank places) the allocator has.").Add(alloc).Set(slots);
  Gauges(r, "dsv3_slots_used", "Slots holding a rank.").Add(alloc).Set(slots - allocator.FreeSlots());
  const BuildInfo& b = GetBuildInfo();
  const auto yes = [](bool v) { return v ? "true" : "false"; };
  Gauges(r, "dsv3_build_info", "1, labelled with what this dsv3d build is.")
      .Add({{"version", b.version},
            {"commit", b.commit},
            {"build_type", b.build_type},
            {"cuda", yes(b.cuda)},
            {"nccl", yes(b.nccl)},
            {"gloo", yes(b.gloo)}})
      .Set(1);
}

}  // namespace

std::string RenderMetrics(const JobStore& store, const JobManager& manager, const Allocator& allocator,
                          const RpcStats& rpc) {
  // A fresh registry per scrape: jobs come and go, and every value is read from the store
  // and the manager now.
  prometheus::Registry page;
  AddJobMetrics(page, store, manager);
  AddControllerMetrics(page, store, manager, allocator);
  AddProcessMetrics(page);
  std::vector<prometheus::MetricFamily> families = page.Collect();
  for (auto& f : rpc.Collect()) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace dsv3::server
