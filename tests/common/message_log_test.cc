// The rank's message log: the stamp it starts lines with and dsv3d's reading of it, levels,
// formats, and the refusal of bad flags.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dsv3/common/message_log.h"

namespace dsv3::msg {
namespace {

using std::chrono::milliseconds;
using std::chrono::system_clock;

// What Log writes to `fd` (1 or 2) while `fn` runs.
template <class Fn>
std::string Captured(int fd, Fn fn) {
  std::FILE* tmp = std::tmpfile();
  const int saved = dup(fd);
  dup2(fileno(tmp), fd);
  fn();
  dup2(saved, fd);
  close(saved);
  std::string out;
  std::rewind(tmp);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), tmp)) > 0) out.append(buf, n);
  std::fclose(tmp);
  return out;
}

TEST(MessageLog, StampsAreUtcMillisecondsAndReadBack) {
  const auto t = system_clock::time_point(milliseconds(1796241447123));  // 2026-12-02T19:57:27.123Z
  EXPECT_EQ(LogStamp(t), "2026-12-02T19:57:27.123Z");
  const StampedLine line = SplitLogStamp("2026-12-02T19:57:27.123Z step 10/20 | loss 3.1");
  ASSERT_TRUE(line.unix_ms.has_value());
  EXPECT_EQ(*line.unix_ms, 1796241447123);
  EXPECT_EQ(line.text, "step 10/20 | loss 3.1");
  // A JSON line keeps its text and gives its time.
  const std::string json_line = R"({"time":"2026-12-02T19:57:27.123Z","level":"info","message":"x"})";
  EXPECT_EQ(*SplitLogStamp(json_line).unix_ms, 1796241447123);
  EXPECT_EQ(SplitLogStamp(json_line).text, json_line);
  // Lines of others (a library, a crash) have no time.
  for (const char* other : {"terminate called after throwing", "2026-12-02 19:57:27.123 dsv3d: x",
                            "2026-12-02T19:57:27.123Zno-space", "2026-13-02T19:57:27.1x3Z x", ""}) {
    EXPECT_FALSE(SplitLogStamp(other).unix_ms.has_value()) << other;
    EXPECT_EQ(SplitLogStamp(other).text, other);
  }
}

TEST(MessageLog, LevelsFormatsAndStreams) {
  ASSERT_EQ(msg::Setup("dsv3-worker", 3, "info", "text"), "");
  const std::string out = Captured(STDOUT_FILENO, [] {
    Info("step 1/2 | loss 2.0");
    Debug("not shown at info");
  });
  const std::string err = Captured(STDERR_FILENO, [] { Warning("slow rank"); });
  ASSERT_EQ(out.size(), 45u) << out;
  EXPECT_TRUE(SplitLogStamp(out.substr(0, out.size() - 1)).unix_ms.has_value()) << out;
  EXPECT_EQ(out.substr(24), " step 1/2 | loss 2.0\n");
  EXPECT_EQ(err.substr(24), " dsv3-worker: warning: slow rank\n");

  ASSERT_EQ(msg::Setup("dsv3-worker", 3, "warning", "json"), "");
  EXPECT_EQ(Captured(STDOUT_FILENO, [] { Info("hidden"); }), "");
  const std::string line = Captured(STDERR_FILENO, [] { Error("out of memory"); });
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "error");
  EXPECT_EQ(j["program"], "dsv3-worker");
  EXPECT_EQ(j["rank"], 3);
  EXPECT_EQ(j["message"], "out of memory");
  EXPECT_TRUE(SplitLogStamp(line).unix_ms.has_value());  // "time" comes first

  EXPECT_EQ(msg::Setup("dsv3-worker", 0, "loud", "text"),
            "--log-level: \"loud\" is not a level; valid: debug, info, warning, error");
  EXPECT_EQ(msg::Setup("dsv3-worker", 0, "info", "xml"), "--log-format: \"xml\" is not a format; valid: text, json");
  ASSERT_EQ(msg::Setup("dsv3-worker", -1, "info", "text"), "");
}

}  // namespace
}  // namespace dsv3::msg
