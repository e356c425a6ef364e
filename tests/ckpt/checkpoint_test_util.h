// A small checkpoint for checkpoint tests: weights filled with the step number.
#pragma once

#include <optional>
#include <string>

#include <torch/torch.h>

#include "dsv3/ckpt/checkpoint.h"

namespace dsv3::test {

inline ckpt::CheckpointData CheckpointAt(int64_t step, int64_t numel = 1000, std::optional<double> val = std::nullopt) {
  ckpt::CheckpointData d;
  d.step = step;
  d.model = {{"model.embed_tokens.weight", torch::full({numel}, static_cast<float>(step))}};
  d.shard = {{"dense.exp_avg", torch::full({4}, static_cast<float>(step))}};
  d.shard_metadata = {{"note", "optimizer state " + std::to_string(step)}};
  d.state_tensors = {{"rng_cpu", torch::arange(8, torch::kByte)}};
  d.trainer_state = {{"step", step}};
  d.val_loss = val;
  return d;
}

}  // namespace dsv3::test
