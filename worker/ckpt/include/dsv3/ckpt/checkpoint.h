// Checkpoint directories: <dir>/checkpoint_<step>/ holding
//   model.safetensors   the weights under HF DeepSeek-V3 names (router biases included)
//   optimizer.pt        the optimizer's state (LibTorch archive)
//   state.safetensors   RNG states and other tensors of the trainer
//   trainer_state.json  step, tokens, data-sampler state, loss scale, ...
//   manifest.json       format, step, validation loss, the resolved config, and the size and
//                       CRC-32 of every file above
// A checkpoint is written into checkpoint_<step>.tmp-<pid>, every file fsynced, then renamed:
// a crash at any moment leaves the previous checkpoints intact and no partial
// checkpoint_<step>. Loading verifies every checksum and refuses a damaged checkpoint.
#pragma once

#include <condition_variable>
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

namespace dsv3::ckpt {

struct CheckpointData {
  int64_t step = 0;
  std::vector<std::pair<std::string, torch::Tensor>> model;
  std::string optimizer;  // serialized optimizer state
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors;
  nlohmann::json trainer_state = nlohmann::json::object();
  nlohmann::json config = nlohmann::json::object();
  std::optional<double> val_loss;
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
  CheckpointManager(std::string dir, int64_t keep_last_n, int64_t keep_best_n);
  ~CheckpointManager();  // waits for an asynchronous save

  // Writes a checkpoint and applies retention. Blocks. Returns the checkpoint's path.
  std::string Save(const CheckpointData& data);
  // Copies the tensors to host memory now, writes in a background thread; a second call
  // waits for the first. Errors surface from the next SaveAsync/Wait.
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
  std::set<std::string> protected_;
  std::mutex mu_;
  std::thread writer_;
  std::string async_path_, async_error_;
};

struct LoadedCheckpoint {
  std::string path;
  int64_t step = 0;
  std::map<std::string, torch::Tensor> model;
  std::string optimizer;
  std::map<std::string, torch::Tensor> state_tensors;
  nlohmann::json trainer_state;
  nlohmann::json manifest;
};

// Verifies and loads a checkpoint. Accepts the directory, its manifest.json, or the guide's
// `checkpoint_<step>.pt` spelling. Throws std::runtime_error saying which file is missing
// or does not match its checksum.
LoadedCheckpoint LoadCheckpoint(const std::string& path);


}  // namespace dsv3::ckpt
