// Numeric precision of training: the fp32 master copy behind a bf16/fp16 compute model,
// fp16's dynamic loss scaling, and the device's peak FLOP/s that MFU is measured against.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "dsv3/model/model.h"

namespace dsv3::train {

// The model that runs forward/backward, from the fp32 master: same weights, lower precision,
// router biases kept in fp32 (their updates are ~1e-3).
void CopyMasterToCompute(model::DeepSeekV3Impl& master, model::DeepSeekV3Impl& compute);

// Per-device peak for MFU when the config gives none: the best of a few large matmuls in
// `dtype` through the model's own GEMM path (on the CPU: tiled over the intra-op threads set
// for the run), measured once at start-up (blocks for well under a second).
double MeasurePeakFlops(torch::Device device, torch::ScalarType dtype);

// fp16 dynamic loss scaling with torch.cuda.amp.GradScaler's defaults: start at 2^16, halve
// on an overflow (and skip that step), double after 2000 good steps. Saved in checkpoints.
struct LossScaler {
  double scale = 65536.0;
  int64_t good_steps = 0;
  // After unscaling: whether the step may be applied (its gradient norm is finite).
  bool Update(double grad_norm);
};

}  // namespace dsv3::train
