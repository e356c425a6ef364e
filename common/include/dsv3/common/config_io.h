// Loading, validating and printing training configs.
//
// The file format is JSON with `//` and `/* */` comments (as the config guide writes its
// examples). Keys starting with "_comment" are ignored. A top-level "extends": "base.json"
// (a string or a list, paths relative to the file) deep-merges the file over its bases:
// objects merge key by key, every other value (lists included) replaces.
//
// Loading never throws on bad input: every problem is collected as a Diagnostic whose path
// is a JSON pointer into the merged config, so one run reports all of them.
// All functions here are thread-compatible (no shared state).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "dsv3/common/config.h"

namespace dsv3::config {

struct Diagnostic {
  std::string path;     // JSON pointer, e.g. /model/moe/num_experts_per_token ("" = file)
  std::string message;  // names the value and what would be valid
  std::string ToString() const;  // "path: message"
};

struct LoadOptions {
  // Ranks the job will run with (dsv3ctl --gpus, the launcher's WORLD_SIZE). Unset: taken
  // from data_parallel_size x tp x pp when that is explicit, from the slurm section when it
  // is enabled, else tp x pp (one data-parallel rank).
  std::optional<int64_t> world_size;
  // Directory that relative "extends" and deepspeed.config_file paths of an in-memory text
  // resolve against (files use their own directory).
  std::string base_dir = ".";
  // dsv3ctl --deepspeed (the guide's flag): deepspeed.enabled = true, as if the file said so.
  bool enable_deepspeed = false;
};

struct LoadResult {
  Config config;  // resolved; meaningful only when ok()
  std::vector<Diagnostic> errors;
  std::vector<Diagnostic> warnings;
  std::vector<std::string> files;  // the file and every base it extends, in merge order
  bool ok() const { return errors.empty(); }
};

// Reads, merges, parses, validates and resolves a config file.
LoadResult LoadConfigFile(const std::string& path, const LoadOptions& options = {});

// The same for config text held in memory (the resolved JSON a rank receives, fuzzing).
LoadResult LoadConfigText(std::string_view text, const LoadOptions& options = {});

// DeepSpeed's own config format, as named by deepspeed.config_file. LooksLikeDeepSpeedConfig
// tells such a file from a dsv3 config (DeepSpeed keys, none of ours). ValidateDeepSpeedFile
// checks the keys dsv3 maps (paths relative to that file) and warns about the others.
bool LooksLikeDeepSpeedConfig(const std::string& path);
LoadResult ValidateDeepSpeedFile(const std::string& path);

// The config as JSON with every field (defaults included) under its canonical name.
// Loading this JSON again yields the same Config.
nlohmann::json ToJson(const Config& config);

// The slurm section alone, through the same schema as the whole config (dsv3d stores it
// with each job): SlurmFromJson reads what SlurmToJson wrote, and reports every problem
// (wrong type, out of range, unknown key) under /slurm/<field>.
nlohmann::json SlurmToJson(const SlurmConfig& slurm);
SlurmConfig SlurmFromJson(const nlohmann::json& section, std::vector<Diagnostic>& errors);
// The same for the watchdog section (dsv3d keeps it with each job).
nlohmann::json WatchdogToJson(const WatchdogConfig& watchdog);
WatchdogConfig WatchdogFromJson(const nlohmann::json& section, std::vector<Diagnostic>& errors);

// The derived values as JSON, for `dsv3ctl config show`.
nlohmann::json DerivedToJson(const Config& config);

// JSON text of ToJson(config), indented.
std::string ToJsonText(const Config& config, int indent = 2);

}  // namespace dsv3::config
