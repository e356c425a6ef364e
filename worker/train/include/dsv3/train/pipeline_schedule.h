// Pipeline schedules: the order in which one stage runs the forward and backward passes of a
// step's micro-batches (Megatron-Core's schedules.py, GPipe and PipeDream-Flush 1F1B).
//   gpipe  every forward, then every backward: all m micro-batches' activations live at once;
//   1f1b   stage s runs min(p - s - 1, m) forwards ahead, then alternates one forward and one
//          backward, then drains: at most p - s micro-batches in flight, the same bubble.
// Both run the backward passes in micro-batch order, so gradient reduction sees the last
// micro-batch last. Pure functions: tested without a pipeline.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsv3::train {

struct PipelineAction {
  bool forward = true;
  int64_t micro = 0;
  bool operator==(const PipelineAction& o) const { return forward == o.forward && micro == o.micro; }
};

// The actions of `stage` (0-based) of `stages` over `micro_batches`; schedule "gpipe" or
// "1f1b" (anything else throws naming /distributed/pipeline_schedule).
std::vector<PipelineAction> PipelineSchedule(const std::string& schedule, int64_t stages, int64_t stage,
                                             int64_t micro_batches);

// The ideal bubble fraction of both schedules: (p - 1) / (m + p - 1).
double IdealBubbleFraction(int64_t stages, int64_t micro_batches);

}  // namespace dsv3::train
