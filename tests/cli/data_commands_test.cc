// dsv3ctl data verbs through RunCli: synth -> prepare (twice) -> sample on the nano config.
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "app.h"
#include "test_util.h"

namespace dsv3::cli {
namespace {

using nlohmann::json;

// The nano config reads ./data/sample and writes ./data/cache: run from a scratch folder.
class DataCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    previous_ = std::filesystem::current_path();
    std::filesystem::current_path(dir_.path());
  }
  void TearDown() override { std::filesystem::current_path(previous_); }
  int Run(const std::vector<std::string>& args, std::string* out = nullptr) {
    std::ostringstream o, e;
    const int code = RunCli(args, o, e);
    if (out != nullptr) *out = o.str();
    if (code != 0) ADD_FAILURE() << "dsv3ctl exited " << code << ": " << e.str();
    return code;
  }
  test::TempDir dir_;
  std::filesystem::path previous_;
};

TEST_F(DataCommandsTest, SynthPrepareSampleOnTheNanoConfig) {
  const std::string config = std::string(DSV3_SOURCE_DIR) + "/configs/train_config_nano.json";
  std::string out;
  ASSERT_EQ(Run({"data", "synth", "data/sample", "--docs", "200", "--seed", "1", "--output", "json"}, &out), 0);
  EXPECT_EQ(json::parse(out)["documents"].get<int64_t>(), 13 * 200);
  ASSERT_EQ(Run({"data", "prepare", config, "--output", "json"}, &out), 0);
  const json first = json::parse(out);
  EXPECT_EQ(first["files"].get<int64_t>(), 13);
  EXPECT_EQ(first["prepared"].get<int64_t>(), 13);
  EXPECT_EQ(first["documents"].get<int64_t>(), 13 * 200);
  EXPECT_TRUE(first["issues"].empty());
  ASSERT_EQ(Run({"data", "prepare", config, "--output", "json"}, &out), 0);
  EXPECT_EQ(json::parse(out)["cached"].get<int64_t>(), 13);
  EXPECT_EQ(json::parse(out)["prepared"].get<int64_t>(), 0);
  ASSERT_EQ(Run({"data", "sample", config, "--count", "4", "--output", "json"}, &out), 0);
  const json windows = json::parse(out);
  ASSERT_EQ(windows.size(), 4u);
  EXPECT_EQ(windows[0]["tokens"].size(), 129u);  // seq_length 128 + 1
  EXPECT_EQ(windows[0]["source"], "cc");         // the heaviest source comes first
}

TEST_F(DataCommandsTest, PrepareWithoutDataNamesTheMissingSource) {
  std::ostringstream o, e;
  const int code = RunCli({"data", "prepare", std::string(DSV3_SOURCE_DIR) + "/configs/train_config_nano.json"}, o, e);
  EXPECT_EQ(code, 1);
  EXPECT_NE(e.str().find("/data/sources/0/paths: source \"cc\" has no files"), std::string::npos) << e.str();
}

}  // namespace
}  // namespace dsv3::cli
