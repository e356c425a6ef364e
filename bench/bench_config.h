// The training benchmarks' config: a shipped config's model and optimizer as they are, its
// data replaced by a synthetic corpus (byte tokenizer), fp32, no evaluation, TensorBoard or
// interval checkpoints, `train_steps` steps logged every `log_interval`.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "dsv3/common/config.h"
#include "dsv3/common/config_io.h"

namespace dsv3::bench {

inline nlohmann::json SyntheticDataConfig(const config::Config& base, const std::string& corpus_dir,
                                          const std::string& cache_dir, int64_t train_steps, int64_t log_interval) {
  nlohmann::json cfg = config::ToJson(base);
  nlohmann::json sources = nlohmann::json::array();
  for (const auto& s : config::DolmaSubsets()) sources.push_back({{"subset", s}, {"paths", {corpus_dir + "/" + s + "/*.json.gz"}}});
  cfg["data"]["sources"] = sources;
  cfg["data"]["tokenizer"] = {{"type", "byte"}, {"model", ""}};
  cfg["data"]["cache_dir"] = cache_dir;
  cfg["logging"]["tensorboard"]["enabled"] = false;
  cfg["validation"]["enabled"] = false;
  cfg["deepspeed"]["enabled"] = false;
  cfg["slurm"]["enabled"] = false;
  cfg["training"]["use_bf16"] = false;
  cfg["training"]["log_interval"] = log_interval;
  cfg["training"]["eval_interval"] = 0;
  cfg["training"]["save_interval"] = 0;
  cfg["training"]["train_steps"] = train_steps;
  cfg["training"]["total_training_tokens"] = nullptr;
  return cfg;
}

}  // namespace dsv3::bench
