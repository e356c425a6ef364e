#include "dsv3/train/pipeline_schedule.h"

#include <algorithm>
#include <stdexcept>

namespace dsv3::train {

namespace {

// Megatron-Core's interleaved order: the k-th forward (or backward) of a stage works on
// micro-batch (k / (p v)) p + k % p, in chunk (k / p) % v (backward: from the last chunk).
std::vector<PipelineAction> Interleaved(int64_t p, int64_t stage, int64_t m, int64_t v) {
  if (m % p != 0) {
    throw std::runtime_error("/distributed/pipeline_schedule: \"interleaved_1f1b\" needs the micro-batches (" +
                             std::to_string(m) + ") in groups of the pipeline stages (" + std::to_string(p) + ")");
  }
  const int64_t total = m * v;
  const auto at = [&](int64_t k, bool forward) {
    const int64_t chunk = (k / p) % v;
    return PipelineAction{forward, (k / (p * v)) * p + k % p, forward ? chunk : v - 1 - chunk};
  };
  const int64_t warmup = std::min((p - stage - 1) * 2 + (v - 1) * p, total);
  std::vector<PipelineAction> out;
  int64_t f = 0, b = 0;
  for (; f < warmup; ++f) out.push_back(at(f, true));
  while (f < total) {
    out.push_back(at(f++, true));
    out.push_back(at(b++, false));
  }
  while (b < total) out.push_back(at(b++, false));
  return out;
}

}  // namespace

std::vector<PipelineAction> PipelineSchedule(const std::string& schedule, int64_t stages, int64_t stage,
                                             int64_t micro_batches, int64_t chunks) {
  std::vector<PipelineAction> out;
  const int64_t m = micro_batches;
  if (schedule == "interleaved_1f1b") return Interleaved(stages, stage, m, chunks);
  if (schedule == "gpipe") {
    for (int64_t i = 0; i < m; ++i) out.push_back({true, i});
    for (int64_t i = 0; i < m; ++i) out.push_back({false, i});
    return out;
  }
  if (schedule != "1f1b") {
    throw std::runtime_error("/distributed/pipeline_schedule: \"" + schedule +
                             "\" is not one of gpipe, 1f1b, interleaved_1f1b");
  }
  const int64_t warmup = std::min(stages - stage - 1, m);
  int64_t next_forward = 0, next_backward = 0;
  for (; next_forward < warmup; ++next_forward) out.push_back({true, next_forward});
  while (next_forward < m) {  // steady state: one forward, one backward
    out.push_back({true, next_forward++});
    out.push_back({false, next_backward++});
  }
  while (next_backward < m) out.push_back({false, next_backward++});
  return out;
}

double IdealBubbleFraction(int64_t stages, int64_t micro_batches, int64_t chunks) {
  return static_cast<double>(stages - 1) / static_cast<double>(chunks * micro_batches + stages - 1);
}

}  // namespace dsv3::train
