#include "dsv3/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace dsv3::train {

double LearningRate(const config::TrainingConfig& t, int64_t step) {
  const int64_t warmup = t.lr_warmup_steps;
  if (step < warmup) return t.learning_rate * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (t.lr_decay_style == "constant") return t.learning_rate;
  const int64_t total = t.train_steps.value_or(step + 1);
  const int64_t span = std::max<int64_t>(1, total - warmup);
  const double progress = std::clamp(static_cast<double>(step - warmup) / static_cast<double>(span), 0.0, 1.0);
  const double range = t.learning_rate - t.min_learning_rate;
  if (t.lr_decay_style == "linear") return t.learning_rate - range * progress;
  return t.min_learning_rate + range * 0.5 * (1.0 + std::cos(M_PI * progress));  // cosine
}

}  // namespace dsv3::train
