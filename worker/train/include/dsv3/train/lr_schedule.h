// Learning rate at a step: linear warmup over lr_warmup_steps from lr/warmup to lr, then
// lr_decay_style (cosine, linear or constant) down to min_learning_rate at train_steps.
#pragma once

#include <cstdint>

#include "dsv3/common/config.h"

namespace dsv3::train {

// `step` is 0-based: the step about to run.
double LearningRate(const config::TrainingConfig& t, int64_t step);

}  // namespace dsv3::train
