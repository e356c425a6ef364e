// The watchdog's rules (server/jobs/watchdog.h) on hand-made rank reports: which rank a
// hang is blamed on and how it is worded, which timeout applies, who is a straggler.
#include "jobs/watchdog.h"

#include <gtest/gtest.h>

namespace dsv3::server {
namespace {

GroupState Group(const std::string& name, uint64_t entered, uint64_t completed, uint64_t waiting = 0,
                 const std::string& op = "allreduce") {
  GroupState g;
  g.name = name;
  g.size = 2;
  g.entered = entered;
  g.completed = completed;
  g.last_op = op;
  g.waiting_seq = waiting;
  g.waiting_op = waiting > 0 ? op : "";
  return g;
}

RankState Rank(int64_t step, const std::string& phase, std::vector<GroupState> groups) {
  RankState r;
  r.reported = true;
  r.step = step;
  r.phase = phase;
  r.last_step_seconds = 0.5;
  r.groups = std::move(groups);
  return r;
}

TEST(WatchdogTest, RankThatNeverEnteredTheCollectiveItsPeerWaitsInIsBlamed) {
  // Rank 0 waits in allreduce #12 of world; rank 1 stopped in forward after #10.
  const std::vector<RankState> ranks = {Rank(5, "backward", {Group("world", 12, 11, 12)}),
                                        Rank(5, "forward", {Group("world", 10, 10)})};
  const HangVerdict v = DiagnoseHang(ranks, 31);
  EXPECT_EQ(v.culprits, std::vector<int>{1});
  EXPECT_EQ(v.reason, "rank 1 hung in forward (allreduce #12 of group world never entered) for 31 s");
  EXPECT_NE(v.summary.find("rank(s) 0 wait"), std::string::npos) << v.summary;
}

TEST(WatchdogTest, AmongFourRanksTheOneBehindInItsDataParallelGroupIsBlamed) {
  // dp groups dp0 = {0, 2}, dp1 = {1, 3}; world = all. Rank 3 is stuck in backward; rank 1
  // waits for it in dp1; ranks 0 and 2 finished their step and wait in the world's
  // agreement all-reduce, which rank 1 and 3 have not entered either.
  const std::vector<RankState> ranks = {
      Rank(7, "optimizer", {Group("world", 20, 19, 20), Group("dp0", 40, 40)}),
      Rank(7, "backward", {Group("world", 19, 19), Group("dp1", 40, 39, 40, "allreduce")}),
      Rank(7, "optimizer", {Group("world", 20, 19, 20), Group("dp0", 40, 40)}),
      Rank(7, "backward", {Group("world", 19, 19), Group("dp1", 38, 38)})};
  const HangVerdict v = DiagnoseHang(ranks, 12);
  // Rank 1 is behind in world too, but it waits (for rank 3): rank 3 is the one not waiting.
  ASSERT_FALSE(v.culprits.empty());
  EXPECT_EQ(v.culprits.front(), 3);
  EXPECT_EQ(v.reason.rfind("rank 3 hung in backward (", 0), 0u) << v.reason;
  EXPECT_NE(v.reason.find("never entered"), std::string::npos) << v.reason;
}

TEST(WatchdogTest, AmongRanksThatAllWaitTheOneFurtherAlongIsBlamed) {
  // Rank 1 skipped allreduce #16 of dp0 and went on to wait in the world's #30 (in its
  // optimizer phase); rank 0 waits in dp0's #16 (in backward), so it never reached world
  // #30. Rank 1 started waiting first: position, not time, decides.
  GroupState dp_wait = Group("dp0", 16, 15, 16);
  dp_wait.waiting_since_ms = 1400;
  GroupState world_wait = Group("world", 30, 29, 30);
  world_wait.waiting_since_ms = 1000;
  const std::vector<RankState> ranks = {Rank(14, "backward", {dp_wait, Group("world", 29, 29)}),
                                        Rank(14, "optimizer", {Group("dp0", 15, 15), world_wait})};
  const HangVerdict v = DiagnoseHang(ranks, 5);
  ASSERT_FALSE(v.culprits.empty());
  EXPECT_EQ(v.culprits.front(), 1);
  EXPECT_EQ(v.reason, "rank 1 hung in optimizer (allreduce #16 of group dp0 never entered; it waits in allreduce #30 "
                      "of group world) for 5 s");
  // The same with the groups' names swapped in order: still the oldest wait decides.
  std::vector<RankState> swapped = ranks;
  for (auto& r : swapped) {
    for (auto& g : r.groups) g.name = g.name == "dp0" ? "zz" : "aa";
  }
  EXPECT_EQ(DiagnoseHang(swapped, 5).culprits.front(), 1);
  // At the same position, the rank missing the collective waited in longest is blamed.
  std::vector<RankState> level = ranks;
  level[0].phase = "optimizer";
  EXPECT_EQ(DiagnoseHang(level, 5).culprits.front(), 0);
}

TEST(WatchdogTest, EveryRankInTheSameCollectiveBlamesTheCollective) {
  const std::vector<RankState> ranks = {Rank(3, "backward", {Group("world", 8, 7, 8)}),
                                        Rank(3, "backward", {Group("world", 8, 7, 8)})};
  const HangVerdict v = DiagnoseHang(ranks, 40);
  EXPECT_TRUE(v.culprits.empty());
  EXPECT_EQ(v.reason, "all 2 ranks wait in allreduce #8 of group world, which does not complete for 40 s "
                      "(the network or the backend is stuck)");
}

TEST(WatchdogTest, RankStuckOutsideCollectivesWhileThePeerWaitsPointToPoint) {
  // Pipeline: stage 1 waits in a recv (p2p sequence numbers are not comparable), stage 0 is
  // stuck computing.
  const std::vector<RankState> ranks = {Rank(4, "forward", {Group("pp0", 30, 30)}),
                                        Rank(4, "forward", {Group("pp0", 31, 30, 31, "recv")})};
  const HangVerdict v = DiagnoseHang(ranks, 9);
  EXPECT_EQ(v.culprits, std::vector<int>{0});
  EXPECT_EQ(v.reason, "rank 0 hung in forward (recv #31 of group pp0 never entered) for 9 s");
}

TEST(WatchdogTest, NobodyCommunicatingBlamesTheRanksBehindInSteps) {
  const std::vector<RankState> ranks = {Rank(9, "checkpoint", {Group("world", 50, 50)}),
                                        Rank(10, "data", {Group("world", 50, 50)})};
  const HangVerdict v = DiagnoseHang(ranks, 700);
  EXPECT_EQ(v.culprits, std::vector<int>{0});
  EXPECT_EQ(v.reason, "rank 0 hung in checkpoint of step 9, outside any collective for 700 s");
}

TEST(WatchdogTest, TimeoutFollowsTheStepTimesWithAFloorAndPhaseAllowances) {
  config::WatchdogConfig w;  // auto: max(30, 5 x p99)
  std::vector<RankState> ranks = {Rank(5, "forward", {}), Rank(5, "backward", {})};
  std::vector<double> steps(100, 2.0);
  steps[99] = 10.0;  // p99 of 100 samples is the 99th smallest: 2 s
  EXPECT_DOUBLE_EQ(TimeoutFor(w, ranks, steps).seconds, 30);
  steps.assign(100, 8.0);
  const HangTimeout t = TimeoutFor(w, ranks, steps);
  EXPECT_DOUBLE_EQ(t.seconds, 40);
  EXPECT_EQ(t.why, "hang timeout 40 s (5 x p99 step time 8 s, floor 30 s)");
  w.hang_timeout_s = 4;
  EXPECT_DOUBLE_EQ(TimeoutFor(w, ranks, steps).seconds, 4);
  ranks[1].phase = "checkpoint";
  EXPECT_DOUBLE_EQ(TimeoutFor(w, ranks, steps).seconds, 600);
  ranks[1].phase = "backward";
  for (auto& r : ranks) r.last_step_seconds = 0;  // no step completed yet: start-up allowance
  EXPECT_DOUBLE_EQ(TimeoutFor(w, ranks, steps).seconds, 600);
}

TEST(WatchdogTest, ProgressIsAnyChangeOfStepPhaseOrCollectives) {
  RankState a = Rank(3, "forward", {Group("world", 4, 4)});
  EXPECT_TRUE(Progressed(RankState{}, a));
  EXPECT_FALSE(Progressed(a, a));
  RankState b = a;
  b.groups[0].completed = 5;
  b.groups[0].entered = 5;
  EXPECT_TRUE(Progressed(a, b));
  b = a;
  b.phase = "backward";
  EXPECT_TRUE(Progressed(a, b));
  b = a;
  b.last_step_seconds = 9;  // times alone are not progress
  EXPECT_FALSE(Progressed(a, b));
}

TEST(WatchdogTest, StragglerIsFlaggedOnceAfterEnoughSlowReports) {
  StragglerTracker t(1.5, 3);
  EXPECT_TRUE(t.Observe({1.0, 2.0, 1.0, 1.0}).empty());
  EXPECT_TRUE(t.Observe({1.0, 2.0, 1.1, 0.9}).empty());
  EXPECT_EQ(t.Observe({1.0, 2.0, 1.0, 1.0}), std::vector<int>{1});
  EXPECT_TRUE(t.flagged(1));
  EXPECT_FALSE(t.flagged(0));
  EXPECT_DOUBLE_EQ(t.ratio(1), 2.0);
  EXPECT_TRUE(t.Observe({1.0, 2.0, 1.0, 1.0}).empty());  // once
  // A slow report that is not consecutive starts over.
  StragglerTracker u(1.5, 2);
  EXPECT_TRUE(u.Observe({1.0, 3.0}).empty());
  EXPECT_TRUE(u.Observe({1.0, 1.0}).empty());
  EXPECT_TRUE(u.Observe({1.0, 3.0}).empty());
  EXPECT_FALSE(u.flagged(1));
  // Factor 0: off.
  StragglerTracker off(0, 1);
  EXPECT_TRUE(off.Observe({1.0, 100.0}).empty());
}

}  // namespace
}  // namespace dsv3::server
