// How dsv3d tells a hung or slow job from a working one, from the progress each rank's
// heartbeat carries (worker.proto RankProgress): pure functions over the ranks' latest
// reports, so the rules are unit-tested apart from processes and clocks.
//
//   hang       no rank made progress for the timeout of the phase the ranks are in;
//              the culprit is named by comparing the ranks' collectives (DiagnoseHang)
//   straggler  a rank whose busy time per step (not waiting for peers) is above the median
//              of the ranks by a factor, report after report (StragglerTracker)
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "dsv3/common/config.h"

namespace dsv3::server {

struct GroupState {
  std::string name;
  int size = 0;
  uint64_t entered = 0, completed = 0;
  std::string last_op;
  uint64_t waiting_seq = 0;  // blocked in this operation now (0: not blocked in this group)
  std::string waiting_op;
  int64_t waiting_since_ms = 0;  // unix ms, the rank's clock (0: unknown)
};

struct RankState {
  bool reported = false;  // a heartbeat with progress arrived this attempt
  int64_t step = 0, micro_step = 0;
  std::string phase = "setup";
  double last_step_seconds = 0, last_busy_seconds = 0;
  std::vector<GroupState> groups;
};

// Whether the progress moved between two reports of one rank.
bool Progressed(const RankState& before, const RankState& after);

// The timeout that applies while the ranks are where they are: a checkpoint or evaluation
// phase on any rank gets its own allowance, an attempt with no completed step the start-up
// allowance, otherwise hang_timeout_s or, when 0, max(floor, multiple x p99 step time).
struct HangTimeout {
  double seconds = 0;
  std::string why;  // "hang timeout 30 s (5 x p99 step time 0.8 s, floor 30 s)"
};
HangTimeout TimeoutFor(const config::WatchdogConfig& w, const std::vector<RankState>& ranks,
                       const std::vector<double>& step_seconds);

double Percentile(std::vector<double> values, double p);

struct HangVerdict {
  std::vector<int> culprits;  // empty when no rank is to blame more than another
  std::string reason;         // one line, for the job's history
  std::string summary;        // the page `dsv3ctl diagnose` prints
};

// Names the rank the others wait for: one that has not entered collective #N of a group
// its peers are blocked in; else, with every rank blocked, the group none completes; else
// the rank(s) stuck outside any collective, in their phase.
HangVerdict DiagnoseHang(const std::vector<RankState>& ranks, double stalled_seconds);

// Flags ranks whose busy seconds per step exceed factor x the median of the ranks for
// `steps` consecutive observations; each rank once per attempt.
class StragglerTracker {
 public:
  StragglerTracker() = default;
  StragglerTracker(double factor, int64_t steps) : factor_(factor), steps_(steps) {}
  // One observation per step the ranks completed: each rank's last busy seconds (<= 0:
  // unknown). Returns the ranks flagged by this observation for the first time.
  std::vector<int> Observe(const std::vector<double>& busy_seconds);
  bool flagged(int rank) const;
  double ratio(int rank) const;  // the rank's last busy time over the median (0: unknown)

 private:
  double factor_ = 0;
  int64_t steps_ = 1;
  std::vector<int64_t> streak_;
  std::vector<bool> flagged_;
  std::vector<double> ratio_;
};

}  // namespace dsv3::server
