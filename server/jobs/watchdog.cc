#include "jobs/watchdog.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <iterator>
#include <sstream>

namespace dsv3::server {
namespace {

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", v);
  return buf;
}

std::string RankList(const std::vector<int>& ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? "," : "") + std::to_string(ranks[i]);
  return s;
}

const GroupState* FindGroup(const RankState& r, const std::string& name) {
  for (const GroupState& g : r.groups) {
    if (g.name == name) return &g;
  }
  return nullptr;
}

const GroupState* BlockedIn(const RankState& r) {
  for (const GroupState& g : r.groups) {
    if (g.waiting_seq > 0) return &g;
  }
  return nullptr;
}

// "allreduce #12 of group dp0"
std::string Op(const std::string& op, uint64_t seq, const std::string& group) {
  return op + " #" + std::to_string(seq) + " of group " + group;
}

// Where a phase falls in a training step, for "which rank is further along".
int PhaseOrder(const std::string& phase) {
  static const char* kOrder[] = {"setup", "data", "forward", "backward", "optimizer", "evaluation", "checkpoint", "done"};
  for (int i = 0; i < static_cast<int>(std::size(kOrder)); ++i) {
    if (phase == kOrder[i]) return i;
  }
  return 0;
}

std::string Table(const std::vector<RankState>& ranks) {
  std::ostringstream o;
  o << "rank  step    micro  phase       blocked in\n";
  for (size_t r = 0; r < ranks.size(); ++r) {
    const RankState& s = ranks[r];
    char head[96];
    std::snprintf(head, sizeof(head), "%-5zu %-7lld %-6lld %-11s ", r, static_cast<long long>(s.step),
                  static_cast<long long>(s.micro_step), s.reported ? s.phase.c_str() : "(no report)");
    o << head;
    const GroupState* b = BlockedIn(s);
    o << (b != nullptr ? Op(b->waiting_op, b->waiting_seq, b->name) : std::string("-")) << "\n";
  }
  o << "\ncollectives per group (entered / completed on each member; groups never used left out):\n";
  std::map<std::string, std::vector<std::string>> groups;
  std::map<std::string, bool> used;
  for (const RankState& r : ranks) {
    for (const GroupState& g : r.groups) used[g.name] = used[g.name] || g.entered > 0;
  }
  for (size_t r = 0; r < ranks.size(); ++r) {
    for (const GroupState& g : ranks[r].groups) {
      if (!used[g.name]) continue;
      groups[g.name].push_back("rank " + std::to_string(r) + " #" + std::to_string(g.entered) + "/#" +
                               std::to_string(g.completed) + (g.last_op.empty() ? "" : " (" + g.last_op + ")"));
    }
  }
  for (const auto& [name, lines] : groups) {
    o << "  " << name << ":";
    for (const auto& l : lines) o << "  " << l;
    o << "\n";
  }
  return o.str();
}

}  // namespace

bool Progressed(const RankState& before, const RankState& after) {
  if (!before.reported) return after.reported;
  if (before.step != after.step || before.micro_step != after.micro_step || before.phase != after.phase ||
      before.groups.size() != after.groups.size()) {
    return true;
  }
  for (size_t i = 0; i < before.groups.size(); ++i) {
    const GroupState &a = before.groups[i], &b = after.groups[i];
    if (a.entered != b.entered || a.completed != b.completed || a.waiting_seq != b.waiting_seq) return true;
  }
  return false;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t i = static_cast<size_t>(std::ceil(p * static_cast<double>(values.size()))) ;
  return values[std::min(values.size() - 1, i == 0 ? 0 : i - 1)];
}

HangTimeout TimeoutFor(const config::WatchdogConfig& w, const std::vector<RankState>& ranks,
                       const std::vector<double>& step_seconds) {
  bool checkpoint = false, evaluation = false, any_step = false;
  for (const RankState& r : ranks) {
    checkpoint = checkpoint || r.phase == "checkpoint";
    evaluation = evaluation || r.phase == "evaluation";
    any_step = any_step || r.last_step_seconds > 0;
  }
  HangTimeout t;
  if (w.hang_timeout_s > 0) {
    t.seconds = w.hang_timeout_s;
    t.why = "watchdog.hang_timeout_s " + Num(w.hang_timeout_s) + " s";
  } else {
    const double p99 = Percentile(step_seconds, 0.99);
    t.seconds = std::max(w.hang_timeout_floor_s, w.step_time_multiple * p99);
    t.why = "hang timeout " + Num(t.seconds) + " s (" + Num(w.step_time_multiple) + " x p99 step time " + Num(p99) +
            " s, floor " + Num(w.hang_timeout_floor_s) + " s)";
  }
  const auto at_least = [&](double s, const std::string& why) {
    if (s > t.seconds) {
      t.seconds = s;
      t.why = why + " " + Num(s) + " s";
    }
  };
  if (!any_step) at_least(w.startup_timeout_s, "watchdog.startup_timeout_s (no step completed yet)");
  if (checkpoint) at_least(w.checkpoint_timeout_s, "watchdog.checkpoint_timeout_s (a rank saves a checkpoint)");
  if (evaluation) at_least(w.evaluation_timeout_s, "watchdog.evaluation_timeout_s (a rank evaluates)");
  return t;
}

HangVerdict DiagnoseHang(const std::vector<RankState>& ranks, double stalled_seconds) {
  const std::string for_s = " for " + Num(stalled_seconds) + " s";
  HangVerdict v;
  // 1. A rank that never entered the collective its peers are blocked in.
  struct Behind {
    int rank;
    std::string group, op;
    uint64_t seq;
    int64_t since;  // when the first peer started waiting in it (0: unknown)
    std::vector<int> waiting;
  };
  struct BlockedAt {
    uint64_t seq = 0;
    std::string op;
    int64_t since = 0;
  };
  std::vector<Behind> behind;
  std::map<std::string, BlockedAt> blocked_at;  // group -> the newest op waited in
  std::map<std::string, std::vector<int>> waiting_ranks;
  for (size_t r = 0; r < ranks.size(); ++r) {
    for (const GroupState& g : ranks[r].groups) {
      if (g.waiting_seq == 0) continue;
      BlockedAt& b = blocked_at[g.name];
      if (g.waiting_seq > b.seq) b = {g.waiting_seq, g.waiting_op, g.waiting_since_ms};
      if (g.waiting_seq == b.seq && g.waiting_since_ms > 0 && (b.since == 0 || g.waiting_since_ms < b.since)) {
        b.since = g.waiting_since_ms;
      }
      waiting_ranks[g.name].push_back(static_cast<int>(r));
    }
  }
  for (const auto& [name, at] : blocked_at) {
    for (size_t r = 0; r < ranks.size(); ++r) {
      const GroupState* g = FindGroup(ranks[r], name);
      if (g != nullptr && g->entered < at.seq) {
        behind.push_back({static_cast<int>(r), name, at.op, at.seq, at.since, waiting_ranks[name]});
      }
    }
  }
  // Prefer a rank that is not itself blocked (stuck in its own work). Among ranks that wait
  // too (a cycle: each misses the other's collective), the one further along in its step got
  // past an operation without issuing it; with equal positions, the one missing the
  // operation its peers have waited in longest.
  std::stable_sort(behind.begin(), behind.end(), [&](const Behind& a, const Behind& b) {
    const bool a_free = BlockedIn(ranks[a.rank]) == nullptr, b_free = BlockedIn(ranks[b.rank]) == nullptr;
    if (a_free != b_free) return a_free;
    const auto at = [&](int r) { return std::make_pair(ranks[r].step, PhaseOrder(ranks[r].phase)); };
    if (at(a.rank) != at(b.rank)) return at(a.rank) > at(b.rank);
    if ((a.since > 0) != (b.since > 0)) return a.since > 0;
    return a.since < b.since;
  });
  if (!behind.empty()) {
    const Behind& b = behind.front();
    const RankState& c = ranks[b.rank];
    const GroupState* own = BlockedIn(c);
    for (const Behind& x : behind) {
      if (std::find(v.culprits.begin(), v.culprits.end(), x.rank) == v.culprits.end() &&
          (BlockedIn(ranks[x.rank]) == nullptr) == (own == nullptr)) {
        v.culprits.push_back(x.rank);
      }
    }
    v.reason = "rank " + std::to_string(b.rank) + " hung in " + c.phase + " (" + Op(b.op, b.seq, b.group) +
               " never entered" +
               (own != nullptr ? "; it waits in " + Op(own->waiting_op, own->waiting_seq, own->name) : "") + ")" +
               for_s;
    v.summary = "rank " + std::to_string(b.rank) + " is the one the others wait for: it is in " + c.phase +
                " of step " + std::to_string(c.step) + " (micro-step " + std::to_string(c.micro_step) +
                ") and never entered " + Op(b.op, b.seq, b.group) + ", in which rank(s) " + RankList(b.waiting) +
                " wait.\n";
  } else {
    std::vector<int> blocked, free;
    for (size_t r = 0; r < ranks.size(); ++r) (BlockedIn(ranks[r]) ? blocked : free).push_back(static_cast<int>(r));
    if (!blocked.empty() && !free.empty()) {
      // 2. Some wait (point to point, say), the others are stuck in their own work.
      v.culprits = free;
      const RankState& c = ranks[free.front()];
      const GroupState* w = BlockedIn(ranks[blocked.front()]);
      v.reason = "rank " + std::to_string(free.front()) + " hung in " + c.phase + " of step " +
                 std::to_string(c.step) + " while rank(s) " + RankList(blocked) + " wait in " +
                 Op(w->waiting_op, w->waiting_seq, w->name) + for_s;
      v.summary = "rank(s) " + RankList(free) + " are stuck outside any collective (rank " +
                  std::to_string(free.front()) + " in " + c.phase + "); rank(s) " + RankList(blocked) +
                  " wait for them.\n";
    } else if (!blocked.empty()) {
      // 3. Everyone is blocked and nobody is behind: the collective itself does not finish.
      const GroupState* w = BlockedIn(ranks[0]);
      bool same = true;
      for (int r : blocked) {
        const GroupState* x = BlockedIn(ranks[r]);
        same = same && x->name == w->name && x->waiting_seq == w->waiting_seq;
      }
      v.reason = same ? "all " + std::to_string(ranks.size()) + " ranks wait in " +
                            Op(w->waiting_op, w->waiting_seq, w->name) + ", which does not complete" + for_s +
                            " (the network or the backend is stuck)"
                      : "every rank waits in a different collective" + for_s +
                            " (mismatched collectives: the ranks issued different operations)";
      v.summary = v.reason + "\n";
    } else {
      // 4. Nobody communicates: the ranks behind the others in steps are stuck in their phase.
      int64_t lowest = ranks.empty() ? 0 : ranks[0].step;
      for (const RankState& r : ranks) lowest = std::min(lowest, r.step);
      for (size_t r = 0; r < ranks.size(); ++r) {
        if (ranks[r].step == lowest) v.culprits.push_back(static_cast<int>(r));
      }
      if (v.culprits.size() == ranks.size()) v.culprits.clear();  // all alike: nobody to single out
      const int first = v.culprits.empty() ? 0 : v.culprits.front();
      const RankState& c = ranks.empty() ? RankState{} : ranks[first];
      v.reason = (v.culprits.empty() ? "every rank" : "rank " + RankList(v.culprits)) + " hung in " + c.phase +
                 " of step " + std::to_string(c.step) + ", outside any collective" + for_s;
      v.summary = v.reason + "\n";
    }
  }
  v.summary = "hang: " + v.reason + "\n\n" + v.summary + "\n" + Table(ranks);
  return v;
}

std::vector<int> StragglerTracker::Observe(const std::vector<double>& busy) {
  const size_t n = busy.size();
  streak_.resize(n, 0);
  flagged_.resize(n, false);
  ratio_.resize(n, 0);
  std::vector<double> known;
  for (double b : busy) {
    if (b > 0) known.push_back(b);
  }
  std::vector<int> newly;
  if (factor_ <= 0 || known.size() < 2) return newly;
  const double median = Percentile(known, 0.5);
  for (size_t r = 0; r < n; ++r) {
    ratio_[r] = busy[r] > 0 && median > 0 ? busy[r] / median : 0;
    streak_[r] = ratio_[r] > factor_ ? streak_[r] + 1 : 0;
    if (streak_[r] >= steps_ && !flagged_[r]) {
      flagged_[r] = true;
      newly.push_back(static_cast<int>(r));
    }
  }
  return newly;
}

bool StragglerTracker::flagged(int rank) const {
  return rank >= 0 && static_cast<size_t>(rank) < flagged_.size() && flagged_[rank];
}

double StragglerTracker::ratio(int rank) const {
  return rank >= 0 && static_cast<size_t>(rank) < ratio_.size() ? ratio_[rank] : 0;
}

}  // namespace dsv3::server
