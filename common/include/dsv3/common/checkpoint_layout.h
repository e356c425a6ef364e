// Where checkpoints go, in one place: config validation fills the default folder in, dsv3d
// records it for a job, the trainer writes into it, and readers find `checkpoint_<step>`
// folders in it. Also where the run's other outputs follow a moved output folder. Header-only, so that the fuzzers' direct builds need no extra source.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace dsv3::config {

inline constexpr const char* kCheckpointPrefix = "checkpoint_";

// `checkpointing.dir` when the config names one, else `<output_dir>/checkpoints`.
inline std::string CheckpointDir(const std::optional<std::string>& configured, const std::string& output_dir) {
  return configured ? *configured : output_dir + "/checkpoints";
}

// A run moved to another output folder (dsv3-worker --output-dir) moves a default checkpoint
// folder with it; a folder the config chose stays. Validation has filled the default in, so
// a folder equal to the old default counts as the default.
inline std::string CheckpointDirForOutput(const std::string& dir, const std::string& old_output,
                                          const std::string& new_output) {
  return dir == CheckpointDir(std::nullopt, old_output) ? CheckpointDir(std::nullopt, new_output) : dir;
}

// The same for `logging.tensorboard.log_dir`: an absolute folder stays; a relative one
// inside the old output folder keeps its place in the new one; any other relative folder
// goes inside the new output folder. (Two runs of one config with different --output-dir
// never write events into one folder.)
inline std::string TensorBoardDirForOutput(const std::string& dir, const std::string& old_output,
                                           const std::string& new_output) {
  const std::filesystem::path d(dir);
  if (d.is_absolute()) return dir;
  const std::filesystem::path rel = d.lexically_normal().lexically_relative(
      std::filesystem::path(old_output).lexically_normal());
  const bool inside = !rel.empty() && *rel.begin() != "..";
  return (std::filesystem::path(new_output) / (inside ? rel : d.lexically_normal())).lexically_normal().string();
}

// The folder name of the checkpoint taken after `step` steps, and its path in `dir`.
inline std::string CheckpointName(int64_t step) { return kCheckpointPrefix + std::to_string(step); }
inline std::string CheckpointPath(const std::string& dir, int64_t step) { return dir + "/" + CheckpointName(step); }

}  // namespace dsv3::config
