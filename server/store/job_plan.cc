#include "store/job_plan.h"

#include <nlohmann/json.hpp>

namespace dsv3::server {

JobPlan PlanFromConfig(const config::Config& config) {
  JobPlan plan;
  plan.launcher = config.slurm.enabled || config.distributed.launcher == "slurm" ? "slurm" : "";
  plan.intra_op_threads = config.training.intra_op_threads > 0 ? config.training.intra_op_threads : 0;
  plan.slurm = config.slurm;
  return plan;
}

std::string PlanToJson(const JobPlan& plan) {
  const config::SlurmConfig& s = plan.slurm;
  nlohmann::json slurm = {{"enabled", s.enabled},
                          {"partition", s.partition},
                          {"nodes", s.nodes},
                          {"ntasks_per_node", s.ntasks_per_node},
                          {"gpus_per_node", s.gpus_per_node},
                          {"cpus_per_task", s.cpus_per_task},
                          {"time", s.time},
                          {"mem", s.mem},
                          {"job_name", s.job_name},
                          {"output", s.output},
                          {"error", s.error},
                          {"extra_args", s.extra_args}};
  if (s.account) slurm["account"] = *s.account;
  if (s.qos) slurm["qos"] = *s.qos;
  return nlohmann::json{{"launcher", plan.launcher}, {"intra_op_threads", plan.intra_op_threads}, {"slurm", slurm}}
      .dump();
}

std::optional<JobPlan> PlanFromJson(const std::string& text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("slurm") || !j["slurm"].is_object()) return std::nullopt;
  try {
    JobPlan plan;
    plan.launcher = j.at("launcher").get<std::string>();
    plan.intra_op_threads = j.at("intra_op_threads").get<int64_t>();
    const auto& s = j["slurm"];
    config::SlurmConfig& out = plan.slurm;
    out.enabled = s.at("enabled").get<bool>();
    out.partition = s.at("partition").get<std::string>();
    out.nodes = s.at("nodes").get<int64_t>();
    out.ntasks_per_node = s.at("ntasks_per_node").get<int64_t>();
    out.gpus_per_node = s.at("gpus_per_node").get<int64_t>();
    out.cpus_per_task = s.at("cpus_per_task").get<int64_t>();
    out.time = s.at("time").get<std::string>();
    out.mem = s.at("mem").get<std::string>();
    out.job_name = s.at("job_name").get<std::string>();
    out.output = s.at("output").get<std::string>();
    out.error = s.at("error").get<std::string>();
    out.extra_args = s.at("extra_args").get<std::vector<std::string>>();
    if (s.contains("account")) out.account = s["account"].get<std::string>();
    if (s.contains("qos")) out.qos = s["qos"].get<std::string>();
    return plan;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;  // a field missing or of the wrong type: not a plan this build wrote
  }
}

}  // namespace dsv3::server
