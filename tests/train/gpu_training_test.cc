// On a CUDA device (label `gpu`; skipped elsewhere): 50 bf16 steps of the tiny config with the
// fused kernels train, that is, the loss falls. bench/gpu/run.sh runs it on GPU machines.
#include <cmath>
#include <filesystem>
#include <numeric>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "bench_config.h"
#include "dsv3/common/config_io.h"
#include "dsv3/data/synth.h"
#include "dsv3/kernels/kernels.h"
#include "dsv3/train/reporter.h"
#include "dsv3/train/trainer.h"
#include "test_util.h"

namespace dsv3::train {
namespace {

struct LossLog final : Reporter {
  std::vector<double> losses;
  void OnMetrics(const StepMetrics& m) override { losses.push_back(m.Get("loss")); }
};

double Mean(const std::vector<double>& v, size_t from, size_t to) {
  return std::accumulate(v.begin() + static_cast<long>(from), v.begin() + static_cast<long>(to), 0.0) /
         static_cast<double>(to - from);
}

TEST(GpuTraining, TinyConfigLossFallsInBf16WithFusedKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  ASSERT_TRUE(kernels::Available(torch::Device(torch::kCUDA)))
      << "this build has no CUDA kernels: configure against a CUDA LibTorch with DSV3_WITH_CUDA=ON";
  test::TempDir dir;
  data::SynthesizeDolma((dir.path() / "corpus").string(), 300, 1);
  const config::LoadResult base = config::LoadConfigFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_tiny.json");
  ASSERT_TRUE(base.ok());
  nlohmann::json cfg = bench::SyntheticDataConfig(base.config, (dir.path() / "corpus").string(),
                                                  (dir.path() / "cache").string(), 50, 1);
  cfg["output_dir"] = (dir.path() / "out").string();
  cfg["checkpointing"]["enabled"] = false;
  cfg["training"]["use_bf16"] = true;
  cfg["training"]["micro_batch_size"] = 8;
  cfg["training"]["global_batch_size"] = 8;
  cfg["training"]["seq_length"] = 512;
  cfg["distributed"]["data_parallel_size"] = 1;
  cfg["distributed"]["backend"] = "nccl";
  const config::LoadResult r = config::LoadConfigText(cfg.dump());
  ASSERT_TRUE(r.ok()) << r.errors[0].ToString();
  ASSERT_TRUE(r.config.model.fused_kernels);
  auto log = std::make_unique<LossLog>();
  LossLog* losses = log.get();
  std::vector<std::unique_ptr<Reporter>> reporters;
  reporters.push_back(std::move(log));
  TrainerOptions options;
  Trainer trainer(r.config, options, std::move(reporters));
  trainer.Run();
  const std::vector<double>& l = losses->losses;
  ASSERT_GE(l.size(), 40u);
  for (double v : l) ASSERT_TRUE(std::isfinite(v));
  // From ln(32000) = 10.4 at the start; the byte corpus uses 259 ids, so a model that trains
  // drops well over a nat within 50 steps.
  EXPECT_LT(Mean(l, l.size() - 10, l.size()), Mean(l, 0, 5) - 1.0)
      << "first " << l.front() << ", last " << l.back();
}

}  // namespace
}  // namespace dsv3::train
