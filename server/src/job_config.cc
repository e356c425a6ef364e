#include "job_config.h"

#include <filesystem>

namespace dsv3::server {
namespace fs = std::filesystem;

std::string AbsoluteUnder(const std::string& dir, const std::string& path) {
  fs::path p(path);
  if (p.is_relative()) p = fs::path(dir) / p;
  return p.lexically_normal().string();
}

namespace {

void AbsolutizeString(nlohmann::json& j, const char* key, const std::string& base) {
  if (j.contains(key) && j[key].is_string() && !j[key].get<std::string>().empty()) {
    j[key] = AbsoluteUnder(base, j[key].get<std::string>());
  }
}

void AbsolutizeSources(nlohmann::json& sources, const std::string& base) {
  if (!sources.is_array()) return;
  for (auto& s : sources) {
    if (!s.contains("paths") || !s["paths"].is_array()) continue;
    for (auto& p : s["paths"]) {
      if (p.is_string()) p = AbsoluteUnder(base, p.get<std::string>());
    }
  }
}

}  // namespace

PreparedConfig PrepareJobConfig(const std::string& config_json, int num_ranks, const std::string& resume_from,
                                const std::string& base_dir) {
  PreparedConfig out;
  config::LoadOptions options;
  if (num_ranks > 0) options.world_size = num_ranks;
  options.base_dir = base_dir;
  config::LoadResult loaded = config::LoadConfigText(config_json, options);
  out.errors = loaded.errors;
  out.warnings = loaded.warnings;
  if (!loaded.ok()) return out;
  config::Config& c = loaded.config;
  if (!resume_from.empty()) c.checkpointing.resume_from = resume_from;
  out.experiment_name = c.experiment_name;
  out.total_steps = c.training.train_steps.value_or(0);  // resolved from the token budget when absent
  out.max_restarts = c.max_restarts;
  out.intra_op_threads = c.training.intra_op_threads;
  out.world_size = c.derived.world_size;
  out.output_dir = c.output_dir;
  out.checkpoint_dir = c.checkpointing.dir.value_or(c.output_dir + "/checkpoints");
  out.tensorboard_dir = c.logging.tensorboard.enabled ? c.logging.tensorboard.log_dir : "";

  nlohmann::json j = config::ToJson(c);
  auto& data = j["data"];
  AbsolutizeSources(data["sources"], base_dir);
  AbsolutizeString(data, "cache_dir", base_dir);
  if (data.contains("tokenizer")) AbsolutizeString(data["tokenizer"], "model", base_dir);
  if (j.contains("validation")) AbsolutizeSources(j["validation"]["sources"], base_dir);
  if (j.contains("deepspeed")) AbsolutizeString(j["deepspeed"], "config_file", base_dir);
  auto& ckpt = j["checkpointing"];
  if (ckpt.contains("resume_from") && ckpt["resume_from"].is_string() && ckpt["resume_from"] != "latest") {
    AbsolutizeString(ckpt, "resume_from", base_dir);
  }
  out.resolved = std::move(j);
  return out;
}

}  // namespace dsv3::server
