// Pipeline schedules: the order in which one stage runs the forward and backward passes of a
// step's micro-batches (Megatron-Core's schedules.py: GPipe, PipeDream-Flush 1F1B, and
// interleaved 1F1B).
//   gpipe             every forward, then every backward: all m micro-batches' activations
//                     live at once;
//   1f1b              stage s runs min(p - s - 1, m) forwards ahead, then alternates one
//                     forward and one backward, then drains: at most p - s micro-batches in
//                     flight, the same bubble;
//   interleaved_1f1b  each stage holds v model chunks (virtual stage k on stage k % p); the
//                     micro-batches go in groups of p through chunk 0, 1, ... v-1, and back
//                     in reverse: (p - 1) * 2 + (v - 1) * p forwards ahead on stage 0, and a
//                     bubble v times smaller. m must be a multiple of p.
// gpipe and 1f1b run the backward passes in micro-batch order. Pure functions: tested
// without a pipeline.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsv3::train {

struct PipelineAction {
  bool forward = true;
  int64_t micro = 0;
  int64_t chunk = 0;  // the model chunk (interleaved_1f1b; else 0)
  bool operator==(const PipelineAction& o) const {
    return forward == o.forward && micro == o.micro && chunk == o.chunk;
  }
};

// The actions of `stage` (0-based) of `stages` over `micro_batches` with `chunks` model chunks
// per stage (interleaved_1f1b only); anything but the three schedules throws naming
// /distributed/pipeline_schedule.
std::vector<PipelineAction> PipelineSchedule(const std::string& schedule, int64_t stages, int64_t stage,
                                             int64_t micro_batches, int64_t chunks = 1);

// The ideal bubble fraction: (p - 1) / (v m + p - 1), v = 1 but for interleaved_1f1b.
double IdealBubbleFraction(int64_t stages, int64_t micro_batches, int64_t chunks = 1);

}  // namespace dsv3::train
