// Checkpoints and reporting formats: safetensors round trip and rejection, atomic commit
// under kill -9, checksum verification with fallback, retention, TensorBoard records.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dsv3/ckpt/checkpoint.h"
#include "dsv3/ckpt/safetensors.h"
#include "dsv3/train/lr_schedule.h"
#include "dsv3/train/tfevents.h"
#include "ckpt/checkpoint_test_util.h"
#include "test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  TempDir dir;
  const std::string path = (dir.path() / "t.safetensors").string();
  const std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"a", torch::randn({3, 4})},
      {"b", torch::randn({5}).to(torch::kBFloat16)},
      {"c", torch::arange(6, torch::kLong).view({2, 3})},
      {"scalar", torch::tensor(2.5, torch::kDouble)}};
  ckpt::WriteSafetensors(path, tensors, {{"format", "pt"}});
  const ckpt::SafetensorsFile f = ckpt::ReadSafetensors(path);
  ASSERT_EQ(f.tensors.size(), 4u);
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(f.tensors.at(name).scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(f.tensors.at(name), t)) << name;
  }
  EXPECT_EQ(f.metadata.at("format"), "pt");
  // The header is 8-byte aligned JSON after a little-endian length, as HF writes it.
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, DamagedFilesAreRejectedWithTheReason) {
  TempDir dir;
  const std::string path = (dir.path() / "t.safetensors").string();
  ckpt::WriteSafetensors(path, {{"w", torch::randn({64})}});
  const auto size = fs::file_size(path);
  fs::resize_file(path, size - 10);
  try {
    ckpt::ReadSafetensors(path);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("do not fit its shape or the file"), std::string::npos) << e.what();
  }
  std::ofstream(path, std::ios::binary) << std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8);
  EXPECT_THROW(ckpt::ReadSafetensors(path), std::runtime_error);
}

using test::CheckpointAt;

TEST(Checkpoint, SaveVerifyLoad) {
  TempDir dir;
  ckpt::CheckpointManager m(dir.path().string(), 0, 0);
  const std::string path = m.Save(CheckpointAt(7));
  EXPECT_EQ(fs::path(path).filename(), "checkpoint_7");
  const ckpt::LoadedCheckpoint c = ckpt::LoadCheckpoint(path + ".pt");  // the guide's spelling works
  EXPECT_EQ(c.step, 7);
  EXPECT_EQ(c.world_size, 1);
  const ckpt::SafetensorsFile shard = ckpt::LoadShard(c, 0);
  EXPECT_EQ(shard.metadata.at("note"), "optimizer state 7");
  EXPECT_TRUE(torch::equal(shard.tensors.at("dense.exp_avg"), torch::full({4}, 7.0f)));
  EXPECT_EQ(c.trainer_state["step"], 7);
  EXPECT_TRUE(torch::equal(c.model.at("model.embed_tokens.weight"), torch::full({1000}, 7.0f)));
}

// A save that runs out of space (here: a file size limit, which fails writes with EFBIG as
// a full disk fails them with ENOSPC) removes its temporary folder and says what it needed.
TEST(Checkpoint, FailedSaveRemovesItsTemporaryFolderAndSaysWhatItNeeded) {
  TempDir dir;
  ckpt::CheckpointManager m(dir.path().string(), 0, 0);
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto previous = signal(SIGXFSZ, SIG_IGN);  // the write fails instead of killing us
  rlimit small = old;
  small.rlim_cur = 64 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string error;
  try {
    m.Save(CheckpointAt(3, /*numel=*/1 << 20));  // a 4 MiB model
  } catch (const std::exception& e) {
    error = e.what();
  }
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, previous);
  EXPECT_NE(error.find("saving a checkpoint in " + dir.path().string() + " failed: "), std::string::npos) << error;
  EXPECT_NE(error.find("File too large"), std::string::npos) << error;
  // 4 MiB of model + 16 B of shard + 8 B of state.
  EXPECT_NE(error.find("the checkpoint of step 3 needs 4.0 MiB"), std::string::npos) << error;
  EXPECT_NE(error.find("its temporary folder checkpoint_3.tmp-"), std::string::npos) << error;
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.path())) left.push_back(e.path().filename().string());
  EXPECT_TRUE(left.empty()) << left.front();
  // The next save, with room, works.
  EXPECT_EQ(fs::path(m.Save(CheckpointAt(4))).filename(), "checkpoint_4");
}

TEST(Checkpoint, CorruptionIsRefusedAndLatestFallsBack) {
  TempDir dir;
  ckpt::CheckpointManager m(dir.path().string(), 0, 0);
  const std::string older = m.Save(CheckpointAt(1));
  const std::string newer = m.Save(CheckpointAt(2));
  {
    std::fstream f(newer + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x42');  // one flipped byte in the data
  }
  try {
    ckpt::LoadCheckpoint(newer);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors does not match its checksum"), std::string::npos) << e.what();
  }
  std::vector<std::string> skipped;
  EXPECT_EQ(ckpt::LatestIntactCheckpoint(dir.path().string(), &skipped), older);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].find("checkpoint_2"), std::string::npos);
}

TEST(Checkpoint, RetentionKeepsLastBestAndProtected) {
  TempDir dir;
  ckpt::CheckpointManager m(dir.path().string(), /*keep_last_n=*/2, /*keep_best_n=*/1);
  m.Save(CheckpointAt(1, 10, 3.0));
  m.Save(CheckpointAt(2, 10, 1.0));  // best
  const std::string third = m.Save(CheckpointAt(3, 10, 2.0));
  m.Protect(third);
  m.Save(CheckpointAt(4, 10, 4.0));
  m.Save(CheckpointAt(5, 10, 5.0));
  m.Save(CheckpointAt(6));
  std::vector<int64_t> steps;
  for (const auto& e : m.List()) steps.push_back(e.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{2, 3, 5, 6}));  // best, protected, last two
}

TEST(Checkpoint, AsyncSaveWritesTheStateAtCallTime) {
  TempDir dir;
  ckpt::CheckpointManager m(dir.path().string(), 0, 0);
  ckpt::CheckpointData d = CheckpointAt(9, 1 << 20);
  torch::Tensor live = d.model[0].second;
  m.SaveAsync(d);
  live.fill_(-1);  // training goes on and changes the weights
  const std::string path = m.Wait();
  EXPECT_TRUE(torch::equal(ckpt::LoadCheckpoint(path).model.at("model.embed_tokens.weight"), torch::full({1 << 20}, 9.0f)));
}

TEST(LrSchedule, WarmupThenCosineLinearConstant) {
  config::TrainingConfig t;
  t.learning_rate = 1e-3;
  t.min_learning_rate = 1e-4;
  t.lr_warmup_steps = 10;
  t.train_steps = 110;
  t.lr_decay_style = "cosine";
  EXPECT_DOUBLE_EQ(train::LearningRate(t, 0), 1e-4);     // 1/10 of the peak
  EXPECT_DOUBLE_EQ(train::LearningRate(t, 9), 1e-3);     // warmup ends at the peak
  EXPECT_DOUBLE_EQ(train::LearningRate(t, 10), 1e-3);    // decay starts at the peak
  EXPECT_NEAR(train::LearningRate(t, 60), 5.5e-4, 1e-12);  // halfway: (max + min) / 2
  EXPECT_NEAR(train::LearningRate(t, 110), 1e-4, 1e-15);  // the end
  t.lr_decay_style = "linear";
  EXPECT_NEAR(train::LearningRate(t, 35), 1e-3 - 0.25 * 9e-4, 1e-15);
  t.lr_decay_style = "constant";
  EXPECT_DOUBLE_EQ(train::LearningRate(t, 100), 1e-3);
}

TEST(TensorBoard, RecordsParseBackWithTheirChecksums) {
  TempDir dir;
  std::string path;
  {
    train::EventFileWriter w(dir.path().string());
    w.AddScalar("train/loss", 2.5, 10, 1700000000.0);
    w.AddScalar("train/lr", 3e-4, 10, 1700000000.5);
    path = w.path();
  }
  EXPECT_NE(fs::path(path).filename().string().find("events.out.tfevents."), std::string::npos);
  const std::vector<std::string> records = train::ReadRecords(path);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  // Event: wall_time (field 1, fixed64), step (field 2) = 10, summary (field 5) > value
  // (field 1) > tag (field 1) "train/loss", simple_value (field 2, fixed32) = 2.5f.
  const std::string& e = records[1];
  ASSERT_EQ(static_cast<unsigned char>(e[0]), 0x09u);
  double wall;
  std::memcpy(&wall, e.data() + 1, 8);
  EXPECT_DOUBLE_EQ(wall, 1700000000.0);
  EXPECT_EQ(static_cast<unsigned char>(e[9]), 0x10u);
  EXPECT_EQ(e[10], 10);
  const size_t tag = e.find("train/loss");
  ASSERT_NE(tag, std::string::npos);
  ASSERT_EQ(static_cast<unsigned char>(e[tag + 10]), 0x15u);
  float value;
  std::memcpy(&value, e.data() + tag + 11, 4);
  EXPECT_EQ(value, 2.5f);
  // CRC32C of "123456789" is the standard check value 0xE3069283.
  EXPECT_EQ(train::Crc32c("123456789"), 0xE3069283u);
  // A flipped byte is caught.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-6, std::ios::end);
    f.put('\x01');
  }
  EXPECT_THROW(train::ReadRecords(path), std::runtime_error);
}

}  // namespace
}  // namespace dsv3
