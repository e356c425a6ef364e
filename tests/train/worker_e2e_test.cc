// dsv3-worker as a user runs it: the nano config on the synthetic corpus trains to a loss
// clearly below its start; SIGTERM saves a checkpoint and exits 0; --resume latest continues.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "app.h"
#include "dsv3/ckpt/checkpoint.h"
#include "dsv3/ckpt/safetensors.h"
#include "dsv3/common/config_io.h"
#include "dsv3/data/synth.h"
#include "hf_reference.h"
#include "test_util.h"
#include "worker_process.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using test::Events;
using test::StartWorker;
using test::WaitExit;

std::string Read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data::SynthesizeDolma((dir_.path() / "data" / "sample").string(), 400, 1);
    fs::create_directories(dir_.path() / "configs");
    fs::copy_file(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_nano.json",
                  dir_.path() / "configs" / "train_config_nano.json");
  }
  test::TempDir dir_;
};

TEST_F(WorkerTest, NanoTrainsToALossWellBelowItsStartAndResumeLatestIsANoOp) {
  const pid_t pid = StartWorker(dir_.path(), {"--config", "configs/train_config_nano.json"}, dir_.path() / "log.txt");
  ASSERT_EQ(WaitExit(pid, 600), 0) << Read(dir_.path() / "log.txt");
  const std::string log = Read(dir_.path() / "log.txt");
  EXPECT_NE(log.find("dsv3-worker: finished at step 160; checkpoint saved to ./outputs/nano/checkpoints/checkpoint_160"),
            std::string::npos)
      << log;
  const fs::path metrics = dir_.path() / "outputs" / "nano" / "metrics.jsonl";
  const auto train = Events(metrics, "train"), eval = Events(metrics, "eval");
  ASSERT_EQ(train.size(), 16u);
  ASSERT_EQ(eval.size(), 2u);
  const double first = train.front()["loss_main"].get<double>(), last_eval = eval.back()["loss"].get<double>();
  EXPECT_LT(last_eval, 0.4 * first) << "first logged loss " << first << ", final eval loss " << last_eval;
  std::printf("nano: first logged main loss %.3f, final eval loss %.3f (ppl %.2f), %.0f tokens/s\n", first, last_eval,
              eval.back()["perplexity"].get<double>(), train.back()["tokens_per_s"].get<double>());
  EXPECT_NO_THROW(ckpt::VerifyCheckpoint((dir_.path() / "outputs/nano/checkpoints/checkpoint_160").string()));
  EXPECT_FALSE(fs::is_empty(dir_.path() / "outputs" / "nano" / "tensorboard"));

  // export-hf: config.json + model.safetensors with exactly HF DeepseekV3's tensors.
  std::ostringstream out, err;
  const fs::path hf = dir_.path() / "hf";
  ASSERT_EQ(cli::RunCli({"export-hf", (dir_.path() / "outputs/nano/checkpoints/checkpoint_160.pt").string(), hf.string()},
                        out, err),
            0)
      << err.str();
  const json config = json::parse(Read(hf / "config.json"));
  EXPECT_EQ(config["hidden_size"], 128);
  EXPECT_EQ(config["num_hidden_layers"], 4);
  EXPECT_EQ(config["num_nextn_predict_layers"], 1);
  EXPECT_EQ(config["topk_method"], "noaux_tc");
  EXPECT_EQ(config["model_type"], "deepseek_v3");
  // The byte tokenizer's ids, so that HF's generate() starts and stops where dsv3's does.
  EXPECT_EQ(config["bos_token_id"], 256);
  EXPECT_EQ(config["eos_token_id"], 257);
  EXPECT_EQ(config["pad_token_id"], 258);
  const auto nano = config::LoadConfigFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_nano.json");
  std::map<std::string, int64_t> expected = test::HfTensors(nano.config.model, 1), got;
  for (const auto& [name, t] : ckpt::ReadSafetensors((hf / "model.safetensors").string()).tensors) got[name] = t.numel();
  for (int64_t layer : {1, 2, 3, 4}) {  // the aux-loss-free bias of every MoE layer (MTP is layer 4)
    expected["model.layers." + std::to_string(layer) + ".mlp.gate.e_score_correction_bias"] = 8;
  }
  EXPECT_EQ(got, expected);

  // dsv3ctl generate runs dsv3-worker generate: JSON holds each prompt's ids and their
  // log-probabilities; the exported HF directory (with the config for its tokenizer) samples
  // the same tokens as the checkpoint.
  const auto run_json = [&](const std::string& args) {
    const std::string command = "cd " + dir_.path().string() + " && " + DSV3_BINARY_DIR + "/cli/dsv3ctl " + args +
                                " --output json 2>" + (dir_.path() / "command.err").string();
    FILE* pipe = popen(command.c_str(), "r");
    std::string text;
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) text.append(buf, n);
    EXPECT_EQ(pclose(pipe), 0) << Read(dir_.path() / "command.err");
    return json::parse(text, nullptr, false);
  };
  const auto generate = [&](const std::string& source, const std::string& extra) {
    return run_json("generate " + source + " --prompt 'The ' --prompt 'def ' --max-tokens 8 --ignore-eos --threads 1" +
                    extra);
  };
  const json from_checkpoint = generate("outputs/nano/checkpoints/checkpoint_160", "");
  ASSERT_EQ(from_checkpoint["generations"].size(), 2u) << from_checkpoint.dump();
  EXPECT_EQ(from_checkpoint["step"], 160);
  for (const json& g : from_checkpoint["generations"]) {
    EXPECT_EQ(g["ids"].size(), 8u);
    EXPECT_EQ(g["finish_reason"], "length");
    ASSERT_EQ(g["logprobs"].size(), 8u);
    for (const json& lp : g["logprobs"]) EXPECT_LE(lp.get<double>(), 0.0);
    std::printf("nano generate: \"%s\" -> \"%s\", %.0f tokens/s\n", g["prompt"].get<std::string>().c_str(),
                g["text"].get<std::string>().c_str(), g["tokens_per_s"].get<double>());
  }
  // dsv3ctl eval on the final checkpoint reports the run's own final evaluation (within fp32
  // rounding: the run summed with the cores it had, eval with one thread).
  const json evaluated = run_json("eval outputs/nano/checkpoints/checkpoint_160 --threads 1");
  ASSERT_TRUE(evaluated.contains("loss")) << evaluated.dump();
  EXPECT_NEAR(evaluated["loss"].get<double>(), last_eval, 1e-6 * last_eval);
  ASSERT_EQ(evaluated["per_source_loss"].size(), eval.back()["per_source_loss"].size());
  for (const auto& [name, loss] : eval.back()["per_source_loss"].items()) {
    EXPECT_NEAR(evaluated["per_source_loss"][name].get<double>(), loss.get<double>(), 1e-6 * loss.get<double>()) << name;
  }
  std::ofstream(dir_.path() / "text.txt") << "def main():\n    return 0\n";
  const json scored = run_json("eval outputs/nano/checkpoints/checkpoint_160 --text text.txt --threads 1");
  EXPECT_EQ(scored["scored_tokens"], 24);  // 25 bytes, the first without context
  EXPECT_LT(scored["total_logprob"].get<double>(), 0.0);

  const json from_hf = generate(hf.string(), " --config configs/train_config_nano.json");
  ASSERT_EQ(from_hf["generations"].size(), 2u) << from_hf.dump();
  EXPECT_EQ(from_hf["generations"][1]["ids"], from_checkpoint["generations"][1]["ids"]);

  const pid_t again =
      StartWorker(dir_.path(), {"--config", "configs/train_config_nano.json", "--resume", "latest"}, dir_.path() / "log2.txt");
  ASSERT_EQ(WaitExit(again, 120), 0) << Read(dir_.path() / "log2.txt");
  EXPECT_NE(Read(dir_.path() / "log2.txt").find("resumed from ./outputs/nano/checkpoints/checkpoint_160"), std::string::npos)
      << Read(dir_.path() / "log2.txt");
}

TEST_F(WorkerTest, SigtermFinishesTheStepSavesAndExitsZero) {
  std::ofstream(dir_.path() / "long.json") << R"({"extends": "configs/train_config_nano.json",
      "training": {"train_steps": 100000, "eval_interval": 0, "save_interval": 0, "log_interval": 2},
      "output_dir": "./outputs/long"})";
  const pid_t pid = StartWorker(dir_.path(), {"--config", "long.json"}, dir_.path() / "log.txt");
  const fs::path metrics = dir_.path() / "outputs" / "long" / "metrics.jsonl";
  for (int i = 0; i < 600 && Events(metrics, "train").empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_FALSE(Events(metrics, "train").empty()) << Read(dir_.path() / "log.txt");
  kill(pid, SIGTERM);
  ASSERT_EQ(WaitExit(pid, 120), 0) << Read(dir_.path() / "log.txt");
  const std::string log = Read(dir_.path() / "log.txt");
  const size_t at = log.find("dsv3-worker: stopped at step ");
  ASSERT_NE(at, std::string::npos) << log;
  const int64_t step = std::stoll(log.substr(at + 29));
  EXPECT_GE(step, 2);
  const std::string expected = "checkpoint saved to ./outputs/long/checkpoints/checkpoint_" + std::to_string(step);
  EXPECT_NE(log.find(expected), std::string::npos) << log;
  EXPECT_NO_THROW(ckpt::VerifyCheckpoint((dir_.path() / "outputs/long/checkpoints" / ("checkpoint_" + std::to_string(step))).string()));
  EXPECT_EQ(Events(metrics, "checkpoint").back()["reason"], "signal");
}

// The exit statuses dsv3d tells apart (common/exit_codes.h): 3-6 are not retried.
TEST_F(WorkerTest, BadArgumentsAndConfigsExitWithTheirCodes) {
  const fs::path d = dir_.path();
  EXPECT_EQ(WaitExit(StartWorker(d, {"--frobnicate"}, d / "a.txt"), 30), 2);
  EXPECT_EQ(WaitExit(StartWorker(d, {"--config", "configs/train_config_nano.json"}, d / "f.txt",
                                 {{"DSV3_FAULT", "hang:rank=0"}}),
                     30),
            2);
  EXPECT_NE(Read(d / "f.txt").find("DSV3_FAULT 'hang:rank=0': hang needs step=N (>= 1)"), std::string::npos);
  std::ofstream(d / "bad.json") << R"({"model": {"num_layer": 3}})";
  EXPECT_EQ(WaitExit(StartWorker(d, {"--config", "bad.json"}, d / "b.txt"), 30), 3);
  EXPECT_NE(Read(d / "b.txt").find("/model/num_layer: unknown field"), std::string::npos);
  json c = json::parse(Read(d / "configs" / "train_config_nano.json"), nullptr, true, /*ignore_comments=*/true);
  json missing = c;
  for (auto& s : missing["data"]["sources"]) s["paths"] = {"nowhere/*.json.gz"};
  std::ofstream(d / "missing.json") << missing.dump();
  EXPECT_EQ(WaitExit(StartWorker(d, {"--config", "missing.json"}, d / "m.txt"), 120), 4);
  EXPECT_NE(Read(d / "m.txt").find("has no files"), std::string::npos) << Read(d / "m.txt");
  EXPECT_EQ(WaitExit(StartWorker(d, {"--config", "configs/train_config_nano.json", "--resume", "gone/checkpoint_5"},
                                 d / "r.txt"),
                     120),
            5);
  EXPECT_NE(Read(d / "r.txt").find("cannot resume from gone/checkpoint_5"), std::string::npos) << Read(d / "r.txt");
  // An embedding of 100M x 128 floats (51 GB) in a 6 GB address space: out of memory, said
  // without LibTorch's backtrace.
  json big = c;
  big["model"]["vocab_size"] = 100000000;
  std::ofstream(d / "big.json") << big.dump();
  EXPECT_EQ(WaitExit(StartWorker(d, {"--config", "big.json"}, d / "o.txt", {}, 6ull << 30), 120), 6);
  const std::string oom = Read(d / "o.txt");
  EXPECT_NE(oom.find("dsv3-worker: error: out of memory: "), std::string::npos) << oom;
  EXPECT_NE(oom.find("you tried to allocate"), std::string::npos) << oom;
  EXPECT_EQ(oom.find("frame #"), std::string::npos) << oom;  // no C++ backtrace
}

}  // namespace
}  // namespace dsv3
