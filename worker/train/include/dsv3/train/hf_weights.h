// Initialising a model from a HuggingFace DeepSeek-V2/V3 directory (checkpointing.init_from_hf,
// dsv3ctl submit --init-from-hf): the config must describe the same model, every tensor the
// model expects must be there with its shape, and each rank reads only what it keeps once the
// model is laid over the ranks (its pipeline stage's layers, its block of routed experts), by
// offsets out of the memory-mapped files (ckpt/hf_checkpoint.h). What a rank does not read
// keeps its initial values and is dropped by the sharding that follows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dsv3/ckpt/hf_checkpoint.h"
#include "dsv3/common/config.h"
#include "dsv3/model/model.h"

namespace dsv3::train {

// What one rank keeps of the model: its pipeline stage and its expert-parallel block.
struct ModelShare {
  int64_t stage = 0, pp = 1;
  int64_t ep_index = 0, ep = 1;
};

struct HfLoadReport {
  int64_t tensors_read = 0;
  int64_t tensors_skipped = 0;  // held by other ranks, or copies of the embedding and head
  int64_t bytes_read = 0;       // copied out of the files, FP8 scales included
  int64_t total_bytes = 0;      // every tensor of every file
  std::vector<int64_t> skipped_mtp_layers;  // HF MTP layers the config does not use
  double seconds = 0;
};

// Loads `hf` into the full (not yet sharded) `model` of the validated `cfg`, on the model's
// device. Throws std::runtime_error: the config's mismatches field by field with the
// `dsv3ctl config import-hf` command that would match them, or the missing, unexpected and
// mis-shaped tensors by name and file; the model is unchanged unless every check passed.
HfLoadReport LoadHfWeights(const config::Config& cfg, const ModelShare& share, model::DeepSeekV3Impl& model,
                           ckpt::HfCheckpoint& hf);

}  // namespace dsv3::train
