// dsv3ctl config verbs, driven through RunCli: exit codes, text and JSON output.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "app.h"
#include "job_rpc.h"
#include "progress.h"
#include "output.h"
#include "dsv3/common/config_io.h"
#include "test_util.h"

namespace dsv3::cli {
namespace {

using nlohmann::json;

struct CliRun {
  int code;
  std::string out, err;
};

CliRun Cli(std::vector<std::string> args) {
  std::ostringstream out, err;
  const int code = RunCli(args, out, err);
  return {code, out.str(), err.str()};
}

std::string Config(const std::string& name) { return std::string(DSV3_SOURCE_DIR) + "/configs/" + name; }

class ConfigCommandsTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& text) {
    const auto path = dir_.path() / name;
    std::ofstream(path) << text;
    return path.string();
  }
  test::TempDir dir_;
};

TEST_F(ConfigCommandsTest, ValidateAcceptsEveryShippedConfig) {
  const CliRun r = Cli({"config", "validate", Config("train_config_nano.json"), Config("train_config_tiny.json"),
                     Config("train_config_small.json"), Config("train_config_large.json"),
                     Config("deepspeed_zero1.json"), Config("deepspeed_zero2.json"), Config("deepspeed_zero3.json")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("train_config_nano.json: valid\n"), std::string::npos);
  EXPECT_NE(r.out.find("deepspeed_zero3.json: valid (DeepSpeed config)\n"), std::string::npos);
}

TEST_F(ConfigCommandsTest, ValidatePrintsEveryErrorWithItsPathAndExitsOne) {
  const std::string bad = Write("bad.json", R"({"model": {"num_layer": 4, "moe": {"num_experts_per_token": 9}},
                                                "training": {"use_fp16": true}})");
  const CliRun r = Cli({"config", "validate", bad});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, bad + ": /model/num_layer: unknown field \"num_layer\" (did you mean \"num_layers\"?)\n" +
                       bad + ": /model/moe/num_experts_per_token: 9 exceeds num_experts (8)\n" + bad +
                       ": /training/use_fp16: true together with use_bf16; choose one mixed-precision mode\n" + bad +
                       ": invalid (3 errors)\n");
}

TEST_F(ConfigCommandsTest, ValidateJsonOutput) {
  const std::string bad = Write("bad.json", R"({"seed": -1})");
  const CliRun r = Cli({"config", "validate", Config("train_config_nano.json"), bad, "--output", "json"});
  EXPECT_EQ(r.code, 1);
  const json report = json::parse(r.out);
  ASSERT_EQ(report.size(), 2u);
  EXPECT_TRUE(report[0]["valid"].get<bool>());
  EXPECT_FALSE(report[1]["valid"].get<bool>());
  EXPECT_EQ(report[1]["errors"][0]["path"], "/seed");
  EXPECT_EQ(report[1]["errors"][0]["message"], "-1 is out of range: must be >= 0");
}

TEST_F(ConfigCommandsTest, UsageErrorsExitTwo) {
  EXPECT_EQ(Cli({}).code, 2);
  EXPECT_EQ(Cli({"config"}).code, 2);
  EXPECT_EQ(Cli({"config", "validate"}).code, 2);
  EXPECT_EQ(Cli({"config", "frobnicate"}).code, 2);
  EXPECT_EQ(Cli({"config", "show", Config("train_config_nano.json"), "--output", "yaml"}).code, 2);
  EXPECT_EQ(Cli({"config", "show", Config("train_config_nano.json"), "--gpus", "0"}).code, 2);
  const CliRun help = Cli({"config", "validate", "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--output"), std::string::npos);
}

// --version: the version, the commit and what the build can do, on stdout, exit 0.
TEST_F(ConfigCommandsTest, VersionNamesTheCommitAndTheBuildOptions) {
  const CliRun v = Cli({"--version"});
  EXPECT_EQ(v.code, 0) << v.err;
  EXPECT_EQ(v.out.rfind("dsv3ctl 0.", 0), 0u) << v.out;
  EXPECT_NE(v.out.find("(commit "), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("Gloo "), std::string::npos) << v.out;
}

// A config that does not write its slurm section leaves Slurm's defaults: no partition, and
// no GPUs for the gloo nano config; one GPU per task for the NCCL tiny config.
TEST_F(ConfigCommandsTest, SlurmScriptAsksOnlyForWhatTheConfigNeeds) {
  const CliRun cpu =
      Cli({"slurm", "script", Config("train_config_nano.json"), "--worker", "/bin/true", "--output", "json"});
  ASSERT_EQ(cpu.code, 0) << cpu.err;
  const std::string script = json::parse(cpu.out)["script"].get<std::string>();
  EXPECT_EQ(script.find("--partition"), std::string::npos) << script;
  EXPECT_EQ(script.find("--gres"), std::string::npos) << script;
  EXPECT_NE(script.find("#SBATCH --ntasks-per-node=1\n"), std::string::npos) << script;
  const CliRun gpu =
      Cli({"slurm", "script", Config("train_config_tiny.json"), "--worker", "/bin/true", "--output", "json"});
  ASSERT_EQ(gpu.code, 0) << gpu.err;
  EXPECT_NE(json::parse(gpu.out)["script"].get<std::string>().find("#SBATCH --gres=gpu:1\n"), std::string::npos);
}

// The completion script completes from the real CLI tree: run in bash, it offers the
// subcommands of the words typed so far and the options of that subcommand.
TEST_F(ConfigCommandsTest, BashCompletionCompletesSubcommandsAndOptions) {
  const CliRun bash = Cli({"completion", "bash"});
  ASSERT_EQ(bash.code, 0) << bash.err;
  test::TempDir dir;
  std::ofstream(dir.path() / "dsv3ctl.bash") << bash.out;
  const auto complete = [&](const std::string& words, int cword) {
    const std::string script = "source '" + (dir.path() / "dsv3ctl.bash").string() + "'; COMP_WORDS=(" + words +
                               "); COMP_CWORD=" + std::to_string(cword) +
                               "; _dsv3ctl; printf '%s\\n' \"${COMPREPLY[@]}\"";
    std::ofstream(dir.path() / "run.sh") << script;
    FILE* p = popen(("cd '" + dir.path().string() + "' && bash run.sh 2>&1").c_str(), "r");
    std::string out;
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
    pclose(p);
    return out;
  };
  EXPECT_EQ(complete("dsv3ctl con", 1), "config\n");
  const std::string verbs = complete("dsv3ctl config ''", 2);
  EXPECT_NE(verbs.find("validate\n"), std::string::npos) << verbs;
  EXPECT_NE(verbs.find("show\n"), std::string::npos) << verbs;
  const std::string options = complete("dsv3ctl status --w", 2);
  EXPECT_EQ(options, "--watch\n");
  EXPECT_EQ(complete("dsv3ctl slurm script --scr", 3), "--script-file\n");
  const CliRun zsh = Cli({"completion", "zsh"});
  ASSERT_EQ(zsh.code, 0) << zsh.err;
  EXPECT_EQ(zsh.out.rfind("#compdef dsv3ctl\n", 0), 0u);
  EXPECT_EQ(Cli({"completion", "fish"}).code, 2);
}

// The man page is troff that groff renders without a warning, with every command in it.
TEST_F(ConfigCommandsTest, ManPageRendersAndListsEveryCommand) {
  const CliRun man = Cli({"--man"});
  ASSERT_EQ(man.code, 0) << man.err;
  EXPECT_EQ(man.out.rfind(".TH DSV3CTL 1 ", 0), 0u) << man.out.substr(0, 200);
  for (const char* section : {".SS \"dsv3ctl config validate\"", ".SS \"dsv3ctl slurm submit\"",
                              ".SS \"dsv3ctl status\"", ".SH \"EXIT STATUS\""}) {
    EXPECT_NE(man.out.find(section), std::string::npos) << section;
  }
  test::TempDir dir;
  std::ofstream(dir.path() / "dsv3ctl.1") << man.out;
  const std::string cmd = "groff -man -Tutf8 -ww -z '" + (dir.path() / "dsv3ctl.1").string() + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string warnings;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) warnings.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << warnings;
  EXPECT_EQ(warnings, "");
}

TEST_F(ConfigCommandsTest, ShowPrintsAResolvedConfigThatLoadsAgain) {
  const CliRun r = Cli({"config", "show", Config("train_config_small.json"), "--gpus", "4"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("//   gradient_accumulation_steps: 16"), std::string::npos) << r.out;  // 256/(4x4)
  // The text output, comments included, is itself a valid config.
  const config::LoadResult again = config::LoadConfigText(r.out);
  ASSERT_TRUE(again.ok()) << again.errors[0].ToString();
  EXPECT_EQ(again.config.distributed.data_parallel_size, 4);
  EXPECT_EQ(again.config.model.num_layers, 16);
  EXPECT_EQ(again.config.derived.effective_zero_stage, 1);
}

TEST_F(ConfigCommandsTest, ShowJsonHasConfigDerivedAndWarnings) {
  const std::string cfg = Write("w.json", R"({"data": {"sources": [{"subset": "dolma_v1_6_cc", "weight": 2}]}})");
  const CliRun r = Cli({"config", "show", cfg, "--output", "json"});
  ASSERT_EQ(r.code, 0);
  const json j = json::parse(r.out);
  EXPECT_DOUBLE_EQ(j["config"]["data"]["sources"][0]["weight"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["derived"]["source_weight_sum"].get<double>(), 2.0);
  EXPECT_EQ(j["warnings"][0]["path"], "/data/sources");
}

TEST_F(ConfigCommandsTest, DeepSpeedFlagTurnsTheSectionOn) {
  const std::string cfg = Write(
      "ds.json", R"({"data": {"sources": [{"subset": "dolma_v1_6_cc"}]},
                    "deepspeed": {"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5}})");
  const CliRun off = Cli({"config", "show", cfg, "--output", "json"});
  ASSERT_EQ(off.code, 0) << off.err;
  EXPECT_EQ(json::parse(off.out)["config"]["deepspeed"]["enabled"], false);
  EXPECT_EQ(json::parse(off.out)["derived"]["zero_stage"], 1);  // the section is off
  const CliRun on = Cli({"config", "show", cfg, "--deepspeed", "--gpus", "2", "--output", "json"});
  ASSERT_EQ(on.code, 0) << on.err;
  const json j = json::parse(on.out);
  EXPECT_EQ(j["config"]["deepspeed"]["enabled"], true);
  EXPECT_EQ(j["derived"]["zero_stage"], 2);
  EXPECT_DOUBLE_EQ(j["config"]["training"]["grad_clip"].get<double>(), 0.5);
}

TEST_F(ConfigCommandsTest, EstimateOnDeepSeekV3Prints671B) {
  const std::string out = (dir_.path() / "v3.json").string();
  const CliRun imported = Cli({"config", "import-hf", std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/hf/deepseek_v3_config.json",
                            "-o", out});
  ASSERT_EQ(imported.code, 0) << imported.err;
  EXPECT_NE(imported.err.find("/rope_scaling"), std::string::npos);  // the warning
  const CliRun r = Cli({"config", "estimate", out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("main model"), std::string::npos);
  EXPECT_NE(r.out.find("671,026,404,352  671.03B"), std::string::npos) << r.out;
  const CliRun j = Cli({"config", "estimate", out, "--output", "json"});
  ASSERT_EQ(j.code, 0);
  EXPECT_EQ(json::parse(j.out)["parameters"]["main_total"].get<int64_t>(), 671026404352);
}

TEST_F(ConfigCommandsTest, EstimateListsLayersOnRequest) {
  const CliRun r = Cli({"config", "estimate", Config("train_config_nano.json"), "--layers"});
  ASSERT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("  0    dense     67.65K  147.46K  215.36K    215.36K\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  3    moe       67.65K  443.39K  511.30K    216.38K\n"), std::string::npos) << r.out;
}

TEST_F(ConfigCommandsTest, ImportHfJsonOutputAndErrors) {
  const std::string hf = Write("hf.json", R"({"hidden_size": 64})");
  const CliRun r = Cli({"config", "import-hf", hf, "--output", "json"});
  EXPECT_EQ(r.code, 1);
  const json j = json::parse(r.out);
  EXPECT_TRUE(j["config"].is_null());
  EXPECT_EQ(j["errors"][0]["path"], "/num_hidden_layers");
  EXPECT_EQ(Cli({"config", "import-hf", (dir_.path() / "missing.json").string()}).code, 1);
}

}  // namespace
}  // namespace dsv3::cli

namespace dsv3::cli {
namespace {

// Colour on a terminal only, never with NO_COLOR (any non-empty value) or TERM=dumb; tables
// stay aligned around colour codes.
TEST(Output, ColourOnlyOnATerminalWithoutNoColor) {
  EXPECT_TRUE(ColorWanted(true, nullptr, "xterm-256color"));
  EXPECT_TRUE(ColorWanted(true, "", nullptr));
  EXPECT_FALSE(ColorWanted(false, nullptr, "xterm"));
  EXPECT_FALSE(ColorWanted(true, "1", "xterm"));
  EXPECT_FALSE(ColorWanted(true, nullptr, "dumb"));
  std::ostringstream not_a_terminal;
  EXPECT_FALSE(UseColor(not_a_terminal));
  EXPECT_EQ(Paint("FAILED", "31", true), "\033[31mFAILED\033[0m");
  EXPECT_EQ(Paint("FAILED", "31", false), "FAILED");
  EXPECT_EQ(RenderTable({{"ID", "STATE", "X"}, {"1", Paint("FAILED", "31", true), "a"}, {"2", "QUEUED", "b"}}),
            "ID  STATE   X\n1   \033[31mFAILED\033[0m  a\n2   QUEUED  b\n");
}

TEST(Logs, SinceTakesADurationOrAUtcTime) {
  const int64_t now = 1796241447123;
  EXPECT_EQ(*ParseSince("90s", now), now - 90000);
  EXPECT_EQ(*ParseSince("10m", now), now - 600000);
  EXPECT_EQ(*ParseSince("2h", now), now - 7200000);
  EXPECT_EQ(*ParseSince("1d", now), now - 86400000);
  EXPECT_EQ(*ParseSince("2026-12-02T19:57:27Z", now), 1796241447000);
  EXPECT_EQ(*ParseSince("2026-12-02T19:57:27.123Z", now), 1796241447123);
  for (const char* bad : {"", "10", "10 m", "-5m", "2026-12-02", "2026-12-02 19:57:27", "yesterday"}) {
    EXPECT_FALSE(ParseSince(bad, now).has_value()) << bad;
  }
}

TEST(Progress, BarsAndSpinnersDrawInPlaceAndClearTheLine) {
  using std::chrono::milliseconds;
  Progress bytes(nullptr, "copying the weights", 200e6, "B");
  EXPECT_EQ(bytes.Frame(50e6, "", milliseconds(3400)),
            "copying the weights [######..................]  25% 47.68 MiB / 190.73 MiB 3 s");
  EXPECT_EQ(bytes.Frame(400e6, "", milliseconds(0)),  // never past the end
            "copying the weights [########################] 100% 381.47 MiB / 190.73 MiB 0 s");
  Progress spinner(nullptr, "waiting for job 3 to end");
  EXPECT_EQ(spinner.Frame(0, "RUNNING", milliseconds(1250)), "waiting for job 3 to end | 1 s RUNNING");
  EXPECT_EQ(spinner.Frame(0, "RUNNING", milliseconds(1350)), "waiting for job 3 to end / 1 s RUNNING");
  std::ostringstream out;
  {
    Progress drawn(&out, "sampling text", 10, "pieces");
    drawn.Update(5);
    drawn.Update(6);  // within 100 ms of the last frame: not drawn
    drawn.Update(10, "", true);
  }
  EXPECT_EQ(out.str(), "\rsampling text [############............]  50% 5 pieces / 10 pieces 0 s"
                       "\rsampling text [########################] 100% 10 pieces / 10 pieces 0 s"
                       "\r" + std::string(71, ' ') + "\r");
  // Not on a terminal (as under ctest), or with --output json: nothing is drawn.
  EXPECT_EQ(ProgressStream(true), nullptr);
}

}  // namespace
}  // namespace dsv3::cli
