// Checkpoint directories: <dir>/checkpoint_<step>/ holding
//   model.safetensors   the full weights under HF DeepSeek-V3 names (router biases included)
//   state.safetensors   RNG states and other tensors of the trainer
//   trainer_state.json  step, tokens, data-sampler state, loss scale, layout, ...
//   shard_<r>.safetensors  rank r's optimizer state (its ZeRO shard) and per-rank tensors;
//                       the metadata says which parameter elements the state covers
//   manifest.json       format, step, world size, validation loss, the resolved config, where
//                       the initial weights came from (weights_from, when not random), and
//                       the size and CRC-32 of every file above
// A checkpoint is written into checkpoint_<step>.tmp-<pid> (.tmp-dist by a distributed run,
// whose ranks all write into it), every file fsynced, then renamed by rank 0: a crash at
// any moment leaves the previous checkpoints intact and no partial checkpoint_<step>.
// Loading verifies every checksum and refuses a damaged checkpoint.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dsv3/ckpt/manifest.h"
#include "dsv3/ckpt/safetensors.h"

namespace dsv3::ckpt {

struct CheckpointData {
  int64_t step = 0;
  // Written by rank 0 only.
  std::vector<std::pair<std::string, torch::Tensor>> model;
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors;
  nlohmann::json trainer_state = nlohmann::json::object();
  nlohmann::json config = nlohmann::json::object();
  std::optional<double> val_loss;
  // Where the run's initial weights came from (a HF directory; "" = random initialisation),
  // kept through resumes; the manifest's "weights_from".
  std::string weights_from;
  // Written by every rank: its shard_<rank>.safetensors.
  std::vector<std::pair<std::string, torch::Tensor>> shard;
  std::map<std::string, std::string> shard_metadata;
};

// The ranks that save one checkpoint together; `barrier` synchronizes them (a collective).
struct SaveGroup {
  int rank = 0, world = 1;
  std::function<void()> barrier;
};

struct CheckpointEntry {
  std::string path;
  int64_t step = 0;
  std::optional<double> val_loss;
};

class CheckpointManager {
 public:
  // keep_last_n / keep_best_n as in the config (0 = keep all / none for being best).
  // Removes temporary directories that crashed saves left behind.
  // Only rank 0 cleans up, renames and applies retention.
  CheckpointManager(std::string dir, int64_t keep_last_n, int64_t keep_best_n, SaveGroup group = {});
  ~CheckpointManager();  // waits for an asynchronous save

  // Writes a checkpoint and applies retention. Blocks; collective in a distributed run.
  // Returns the checkpoint's path.
  std::string Save(const CheckpointData& data);
  // Copies the tensors to host memory now, writes in a background thread; a second call
  // waits for the first. Errors surface from the next SaveAsync/Wait. One rank only.
  void SaveAsync(CheckpointData data);
  // Waits for the background save; returns its path ("" if none) or throws its error.
  std::string Wait();

  // Committed checkpoints, oldest first (not verified).
  std::vector<CheckpointEntry> List() const;
  // Never deleted by retention (the checkpoint a run resumed from).
  void Protect(const std::string& path);
  const std::string& dir() const { return dir_; }

 private:
  void ApplyRetention();

  std::string dir_;
  int64_t keep_last_n_, keep_best_n_;
  SaveGroup group_;
  std::set<std::string> protected_;
  std::mutex mu_;
  std::thread writer_;
  std::string async_path_, async_error_;
};

struct LoadedCheckpoint {
  std::string path;
  int64_t step = 0;
  std::map<std::string, torch::Tensor> model;
  std::map<std::string, torch::Tensor> state_tensors;
  nlohmann::json trainer_state;
  nlohmann::json manifest;
  int world_size = 1;  // ranks that saved it: shard_0 .. shard_<world_size - 1>
};

// Verifies and loads a checkpoint. Accepts the directory, its manifest.json, or the guide's
// `checkpoint_<step>.pt` spelling. Throws std::runtime_error saying which file is missing
// or does not match its checksum.
LoadedCheckpoint LoadCheckpoint(const std::string& path);

// Rank r's shard of a loaded (verified) checkpoint.
SafetensorsFile LoadShard(const LoadedCheckpoint& checkpoint, int rank);


}  // namespace dsv3::ckpt
