// kill -9 during checkpoint saves: committed checkpoints stay intact, partial ones are never
// trusted. Its own binary: it forks, and the child must start with a fresh thread pool.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dsv3/ckpt/checkpoint.h"
#include "ckpt/checkpoint_test_util.h"
#include "test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

using test::CheckpointAt;

TEST(Checkpoint, KillDashNineWhileSavingLeavesCommittedCheckpointsIntact) {
  for (int delay_ms : {40, 90, 160}) {
    TempDir dir;
    const pid_t child = fork();
    if (child == 0) {
      torch::set_num_threads(1);
      ckpt::CheckpointManager m(dir.path().string(), 0, 0);
      for (int64_t step = 1; step < 1000; ++step) m.Save(CheckpointAt(step, 2 << 20));  // 8 MB each
      _exit(0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status));
    int committed = 0;
    for (const auto& e : fs::directory_iterator(dir.path())) {
      const std::string name = e.path().filename().string();
      if (name.find(".tmp-") != std::string::npos) continue;  // an unfinished save, never trusted
      EXPECT_NO_THROW(ckpt::VerifyCheckpoint(e.path().string())) << name;
      ++committed;
    }
    std::vector<std::string> skipped;
    const auto latest = ckpt::LatestIntactCheckpoint(dir.path().string(), &skipped);
    EXPECT_TRUE(skipped.empty());
    if (committed > 0) {
      ASSERT_TRUE(latest.has_value());
      EXPECT_NO_THROW(ckpt::LoadCheckpoint(*latest));
    }
    // A new manager cleans up the interrupted save.
    ckpt::CheckpointManager cleanup(dir.path().string(), 0, 0);
    for (const auto& e : fs::directory_iterator(dir.path()))
      EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos);
  }
}

}  // namespace
}  // namespace dsv3
