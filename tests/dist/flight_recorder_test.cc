// The flight recorder's bookkeeping and DSV3_FAULT's grammar (dist/flight_recorder.h,
// dist/faults.h).
#include <gtest/gtest.h>

#include "dsv3/dist/faults.h"
#include "dsv3/dist/flight_recorder.h"

namespace dsv3::dist {
namespace {

TEST(FlightRecorderTest, CountsEnteredCompletedAndTheOperationWaitedIn) {
  FlightRecorder& fr = FlightRecorder::Get();
  const int g = fr.AddGroup("test_dp0", 2, 1);
  const uint64_t a = fr.Enter(g, "allreduce", "float32[1024]", 4096, "");
  const uint64_t b = fr.Enter(g, "allgather", "bfloat16[8]", 16, "");
  EXPECT_EQ(a, 1u);
  EXPECT_EQ(b, 2u);
  fr.WaitStarted(g, a);
  fr.Ended(g, a, OpState::kCompleted);
  fr.WaitStarted(g, b);
  fr.SetStep(7, 1);
  const ProgressSnapshot s = fr.Snapshot();
  EXPECT_EQ(s.step, 7);
  EXPECT_EQ(s.micro_step, 1);
  const GroupProgress* mine = nullptr;
  for (const auto& x : s.groups) {
    if (x.name == "test_dp0") mine = &x;
  }
  ASSERT_NE(mine, nullptr);
  EXPECT_EQ(mine->entered, 2u);
  EXPECT_EQ(mine->completed, 1u);
  EXPECT_EQ(mine->last_op, "allgather");
  EXPECT_EQ(mine->waiting_seq, 2u);
  EXPECT_EQ(mine->waiting_op, "allgather");
  const std::string dump = fr.Dump();
  EXPECT_NE(dump.find("group test_dp0 (2 ranks, this rank is 1): entered #2, completed #1, waiting in allgather #2"),
            std::string::npos)
      << dump;
  EXPECT_NE(dump.find("float32[1024]"), std::string::npos) << dump;
  fr.Ended(g, b, OpState::kCompleted);
  for (const auto& x : fr.Snapshot().groups) {
    if (x.name == "test_dp0") {
      EXPECT_EQ(x.completed, 2u);
      EXPECT_EQ(x.waiting_seq, 0u);
    }
  }
}

TEST(FlightRecorderTest, RingKeepsTheLastOperations) {
  FlightRecorder& fr = FlightRecorder::Get();
  const int g = fr.AddGroup("test_ring", 2, 0);
  for (int i = 0; i < 100; ++i) fr.Ended(g, fr.Enter(g, "broadcast", "int64[1]", 8, "root 0"), OpState::kCompleted);
  const std::string dump = fr.Dump();
  EXPECT_NE(dump.find("#100 "), std::string::npos);
  EXPECT_NE(dump.find("#37 "), std::string::npos);   // 100 - 64 + 1
  EXPECT_EQ(dump.find("#36 "), std::string::npos);
}

TEST(FaultsTest, ParsesEveryKindWithDefaults) {
  const auto f = ParseFaults("hang:rank=1,step=5;slow:rank=0,factor=3;exit:rank=2,step=4,code=3,phase=backward;"
                             "skip_collective:rank=1,group=dp0,seq=9,attempt=0");
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[0].kind, "hang");
  EXPECT_EQ(f[0].rank, 1);
  EXPECT_EQ(f[0].step, 5);
  EXPECT_EQ(f[0].phase, TrainPhase::kForward);
  EXPECT_EQ(f[0].attempt, 1);
  EXPECT_DOUBLE_EQ(f[1].factor, 3);
  EXPECT_EQ(f[2].code, 3);
  EXPECT_EQ(f[2].phase, TrainPhase::kBackward);
  EXPECT_EQ(f[3].group, "dp0");
  EXPECT_EQ(f[3].seq, 9);
  EXPECT_EQ(f[3].attempt, 0);
}

TEST(FaultsTest, MalformedFaultsAreRefusedNamingThePart) {
  const auto error = [](const std::string& text) {
    try {
      ParseFaults(text);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(error("freeze:rank=1"),
            "DSV3_FAULT 'freeze:rank=1': 'freeze' is not a fault; use hang, exit, slow, skip_collective or "
            "corrupt_checkpoint");
  EXPECT_EQ(error("corrupt_checkpoint:rank=0"),
            "DSV3_FAULT 'corrupt_checkpoint:rank=0': corrupt_checkpoint needs step=N (>= 1)");
  EXPECT_EQ(error("hang:rank=1"), "DSV3_FAULT 'hang:rank=1': hang needs step=N (>= 1)");
  EXPECT_EQ(error("hang:step=2"), "DSV3_FAULT 'hang:step=2': hang needs rank=R");
  EXPECT_EQ(error("hang:rank=x,step=2"), "DSV3_FAULT 'hang:rank=x,step=2': 'x' is not a number");
  EXPECT_EQ(error("hang:rank=0,step=2,phase=lunch"),
            "DSV3_FAULT 'hang:rank=0,step=2,phase=lunch': phase 'lunch' is not one of data, forward, backward, "
            "optimizer, checkpoint, evaluation");
  EXPECT_EQ(error("slow:rank=0,factor=0.5"), "DSV3_FAULT 'slow:rank=0,factor=0.5': slow needs factor=F (>= 1)");
  EXPECT_EQ(error("slow:rank=0,speed=2"), "DSV3_FAULT 'slow:rank=0,speed=2': unknown key 'speed'");
}

}  // namespace
}  // namespace dsv3::dist
