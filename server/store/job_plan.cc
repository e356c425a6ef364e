#include "store/job_plan.h"

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"

namespace dsv3::server {

JobPlan PlanFromConfig(const config::Config& config) {
  JobPlan plan;
  plan.launcher = config.slurm.enabled || config.distributed.launcher == "slurm" ? "slurm" : "";
  plan.intra_op_threads = config.training.intra_op_threads > 0 ? config.training.intra_op_threads : 0;
  plan.slurm = config.slurm;
  plan.watchdog = config.watchdog;
  plan.save_interval = config.checkpointing.enabled ? config.training.save_interval : 0;
  return plan;
}

std::string PlanToJson(const JobPlan& plan) {
  return nlohmann::json{{"launcher", plan.launcher},
                        {"intra_op_threads", plan.intra_op_threads},
                        {"slurm", config::SlurmToJson(plan.slurm)},
                        {"watchdog", config::WatchdogToJson(plan.watchdog)},
                        {"save_interval", plan.save_interval}}
      .dump();
}

std::optional<JobPlan> PlanFromJson(const std::string& text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("launcher") || !j["launcher"].is_string() || !j.contains("intra_op_threads") ||
      !j["intra_op_threads"].is_number_integer() || !j.contains("slurm")) {
    return std::nullopt;
  }
  JobPlan plan;
  plan.launcher = j["launcher"].get<std::string>();
  plan.intra_op_threads = j["intra_op_threads"].get<int64_t>();
  std::vector<config::Diagnostic> errors;
  plan.slurm = config::SlurmFromJson(j["slurm"], errors);
  // Plans stored before the watchdog existed have none: its defaults.
  if (j.contains("watchdog")) plan.watchdog = config::WatchdogFromJson(j["watchdog"], errors);
  if (j.contains("save_interval") && j["save_interval"].is_number_integer()) {
    plan.save_interval = j["save_interval"].get<int64_t>();
  }
  if (!errors.empty()) return std::nullopt;  // not a plan this build wrote
  return plan;
}

}  // namespace dsv3::server
