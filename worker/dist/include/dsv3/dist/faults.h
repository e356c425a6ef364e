// Fault injection, a testing aid: off unless DSV3_FAULT is set. The value is a list of
// faults separated by ';', each `kind:key=value,...`:
//   hang:rank=R,step=N[,phase=P]        the training thread of rank R stops for good when it
//                                        enters phase P (default forward) of step N
//   exit:rank=R,step=N,code=C[,phase=P] rank R exits with status C there
//   slow:rank=R,factor=F                rank R's forward and backward take F times as long
//   skip_collective:rank=R,group=G,seq=N  rank R never issues operation #N of group G (its
//                                        peers wait in it)
//   corrupt_checkpoint:rank=R,step=N    rank R damages its shard of the checkpoint of step
//                                        N after writing it (its checksum no longer matches)
// Every fault fires in attempt 1 only (dsv3d's DSV3_ATTEMPT), so the restart runs clean;
// `attempt=A` picks another, `attempt=0` every one; `job=J` limits a fault to dsv3d's job J
// (DSV3_JOB_ID). LibTorch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dsv3/dist/flight_recorder.h"

namespace dsv3::dist {

struct Fault {
  std::string kind;  // hang, exit, slow, skip_collective, corrupt_checkpoint
  int rank = -1;
  int64_t step = -1;
  TrainPhase phase = TrainPhase::kForward;
  int code = 1;
  double factor = 1;
  std::string group;
  int64_t seq = -1;
  int attempt = 1;  // 0 = every attempt
  int64_t job = 0;  // 0 = any job
};

// Parses a DSV3_FAULT value; throws std::invalid_argument naming the part that is wrong.
std::vector<Fault> ParseFaults(const std::string& text);

// The faults of this process (DSV3_FAULT, DSV3_ATTEMPT and its rank), set once at start-up.
class Faults {
 public:
  static void Install(int rank);  // reads the environment; throws on a malformed DSV3_FAULT
  static const Faults& Get();

  bool any() const { return !faults_.empty(); }
  // The fault to fire on entering `phase` of `step`, if any (hang or exit).
  const Fault* AtPhase(int64_t step, TrainPhase phase) const;
  double SlowFactor() const;  // 1 = none
  bool SkipCollective(const std::string& group, uint64_t seq) const;
  bool CorruptCheckpoint(int64_t step) const;

 private:
  std::vector<Fault> faults_;  // those of this rank and attempt
};

// Never returns: the training thread sleeps (stack dumps show where).
[[noreturn]] void HangForever(const std::string& why);

}  // namespace dsv3::dist
