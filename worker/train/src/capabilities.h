// What this build cannot train, refused before anything is built, each with the config
// field, its value and what would work (fp8, DeepEP, FlashMLA, tensor and pipeline
// parallelism, parameter offload on GPUs), and the launch facts that must agree with the
// config (world size, communicator, data-parallel size).
#pragma once

#include <torch/torch.h>

#include "dsv3/common/config.h"
#include "dsv3/train/trainer.h"

namespace dsv3::train {

// Throws std::runtime_error naming the field when the config or the launch cannot train here.
void RefuseWhatThisBuildCannot(const config::Config& c, const TrainerOptions& opt);

// fp16 training needs fp16 matmuls on `device` (LibTorch 1.13 has none on the CPU): tried
// once, and refused naming /training/use_fp16 when they fail.
void RequireFp16Matmul(torch::Device device);

}  // namespace dsv3::train
