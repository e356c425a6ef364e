// What Slurm's job states mean to dsv3d. Which jobs ask for Slurm: job_plan_test.cc.
#include "allocators/slurm_allocator.h"

#include <gtest/gtest.h>

namespace dsv3::server {
namespace {

TEST(SlurmStates, MapToRunningWaitingOrEndedWithAnExitCode) {
  for (const char* waiting : {"PENDING", "CONFIGURING", "REQUEUED", "SUSPENDED"}) {
    const SlurmStateMeaning m = InterpretSlurmState(waiting);
    EXPECT_FALSE(m.ended) << waiting;
    EXPECT_FALSE(m.running) << waiting;
  }
  for (const char* running : {"RUNNING", "COMPLETING"}) {
    EXPECT_TRUE(InterpretSlurmState(running).running) << running;
    EXPECT_FALSE(InterpretSlurmState(running).ended) << running;
  }
  EXPECT_TRUE(InterpretSlurmState("COMPLETED").ended);
  EXPECT_EQ(InterpretSlurmState("COMPLETED").exit_code, 0);
  EXPECT_EQ(InterpretSlurmState("CANCELLED").exit_code, 143);
  for (const char* failed : {"FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                             "VANISHED"}) {
    const SlurmStateMeaning m = InterpretSlurmState(failed);
    EXPECT_TRUE(m.ended) << failed;
    EXPECT_EQ(m.exit_code, 1) << failed;
  }
}

}  // namespace
}  // namespace dsv3::server
