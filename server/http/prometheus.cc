#include "http/prometheus.h"

#include <cmath>
#include <cstdio>
#include <sstream>
#include <vector>

namespace dsv3::server {
namespace {

constexpr int64_t kRecentMs = 3600 * 1000;

std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

struct Family {
  const char* name;
  const char* type;
  const char* help;
  std::vector<std::string> samples;  // "labels} value" lines, without the name
};

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
    {"mfu", "dsv3_job_mfu", "Model FLOPs utilization (0..1) over the last log interval."},
    {"grad_norm", "dsv3_job_grad_norm", "Gradient norm before clipping."},
    {"expert_load_max_over_mean", "dsv3_job_expert_load_imbalance",
     "Worst MoE layer's max expert load over the mean load (1 = balanced)."},
};

}  // namespace

std::string RenderMetrics(const JobStore& store, const JobManager& manager, const Allocator& allocator,
                          const RpcStats& rpc) {
  const int64_t now = NowMs();
  JobFilter filter;
  filter.limit = 200;
  std::vector<Family> job_families;
  for (const auto& g : kJobGauges) job_families.push_back({g.name, "gauge", g.help, {}});
  Family step{"dsv3_job_step", "gauge", "Latest training step reported.", {}};
  Family total{"dsv3_job_total_steps", "gauge", "training.train_steps of the job.", {}};
  Family val{"dsv3_job_val_loss", "gauge", "Latest held-out loss.", {}};
  Family ckpt_step{"dsv3_job_last_checkpoint_step", "gauge", "Step of the newest checkpoint.", {}};
  Family ckpt_age{"dsv3_job_last_checkpoint_age_seconds", "gauge", "Seconds since the newest checkpoint.", {}};
  Family restarts{"dsv3_job_restarts", "gauge", "Restarts of the job so far.", {}};
  Family state{"dsv3_job_state", "gauge", "1 for the job's current state.", {}};
  Family rank_step{"dsv3_rank_step_seconds", "gauge", "Wall time of the rank's last training step.", {}};
  Family rank_busy{"dsv3_rank_busy_seconds", "gauge",
                   "Of the rank's last step, the time not spent waiting for its peers.", {}};
  Family straggler{"dsv3_rank_straggler", "gauge",
                   "1 when the watchdog flagged the rank as slower than the median of the job's ranks.", {}};
  for (const JobRecord& j : store.ListJobs(filter)) {
    if (IsTerminal(j.state) && now - j.finished_ms > kRecentMs) continue;
    const std::string labels =
        "{job_id=\"" + std::to_string(j.id) + "\",job_name=\"" + EscapeLabel(j.name) + "\"";
    const JobProgress p = manager.Progress(j);
    for (size_t i = 0; i < std::size(kJobGauges); ++i) {
      auto it = p.latest.find(kJobGauges[i].series);
      if (it != p.latest.end()) job_families[i].samples.push_back(labels + "} " + Number(it->second));
    }
    step.samples.push_back(labels + "} " + std::to_string(p.step));
    total.samples.push_back(labels + "} " + std::to_string(j.total_steps));
    if (p.val_loss) val.samples.push_back(labels + "} " + Number(*p.val_loss));
    if (!p.last_checkpoint.empty()) {
      ckpt_step.samples.push_back(labels + "} " + std::to_string(p.last_checkpoint_step));
      if (p.last_checkpoint_ms > 0) {
        ckpt_age.samples.push_back(labels + "} " + Number((now - p.last_checkpoint_ms) / 1000.0));
      }
    }
    restarts.samples.push_back(labels + "} " + std::to_string(j.restarts));
    state.samples.push_back(labels + ",state=\"" + JobStateName(j.state) + "\"} 1");
    if (IsTerminal(j.state)) continue;
    for (const RankView& r : p.ranks) {
      if (r.step_seconds <= 0) continue;
      const std::string rank = labels + ",rank=\"" + std::to_string(r.rank) + "\"} ";
      rank_step.samples.push_back(rank + Number(r.step_seconds));
      rank_busy.samples.push_back(rank + Number(r.busy_seconds));
      straggler.samples.push_back(rank + (r.straggler ? "1" : "0"));
    }
  }
  for (Family* f :
       {&step, &total, &val, &ckpt_step, &ckpt_age, &restarts, &state, &rank_step, &rank_busy, &straggler}) {
    job_families.push_back(*f);
  }

  std::ostringstream os;
  for (const auto& f : job_families) {
    os << "# HELP " << f.name << " " << f.help << "\n# TYPE " << f.name << " " << f.type << "\n";
    for (const auto& s : f.samples) os << f.name << s << "\n";
  }
  const auto counts = store.CountByState();
  os << "# HELP dsv3_jobs Jobs in the store by state.\n# TYPE dsv3_jobs gauge\n";
  for (int s = 1; s <= 7; ++s) {
    auto it = counts.find(static_cast<JobState>(s));
    os << "dsv3_jobs{state=\"" << JobStateName(static_cast<JobState>(s)) << "\"} "
       << (it == counts.end() ? 0 : it->second) << "\n";
  }
  os << "# HELP dsv3_queue_length Jobs waiting for slots.\n# TYPE dsv3_queue_length gauge\n"
     << "dsv3_queue_length " << manager.QueueLength() << "\n"
     << "# HELP dsv3_job_restarts_total Restarts of every job in the store.\n# TYPE dsv3_job_restarts_total counter\n"
     << "dsv3_job_restarts_total " << store.TotalRestarts() << "\n"
     << "# HELP dsv3_slots Slots of the allocator.\n# TYPE dsv3_slots gauge\n"
     << "dsv3_slots{allocator=\"" << allocator.Name() << "\",kind=\"total\"} " << allocator.TotalSlots() << "\n"
     << "dsv3_slots{allocator=\"" << allocator.Name() << "\",kind=\"free\"} " << allocator.FreeSlots() << "\n";
  os << rpc.Render();
  return os.str();
}

}  // namespace dsv3::server
