#include "dsv3/train/pipeline_schedule.h"

#include <algorithm>
#include <stdexcept>

namespace dsv3::train {

std::vector<PipelineAction> PipelineSchedule(const std::string& schedule, int64_t stages, int64_t stage,
                                             int64_t micro_batches) {
  std::vector<PipelineAction> out;
  const int64_t m = micro_batches;
  if (schedule == "gpipe") {
    for (int64_t i = 0; i < m; ++i) out.push_back({true, i});
    for (int64_t i = 0; i < m; ++i) out.push_back({false, i});
    return out;
  }
  if (schedule != "1f1b") {
    throw std::runtime_error("/distributed/pipeline_schedule: \"" + schedule +
                             "\" is not built yet; use \"1f1b\" or \"gpipe\"");
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

double IdealBubbleFraction(int64_t stages, int64_t micro_batches) {
  return static_cast<double>(stages - 1) / static_cast<double>(micro_batches + stages - 1);
}

}  // namespace dsv3::train
