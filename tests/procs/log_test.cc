// The daemons' log (procs/log.h): levels filter, text lines name non-info levels, JSON lines
// are objects a log shipper parses, journald gets priority prefixes, bad flags are refused.
#include "dsv3/procs/log.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace dsv3 {
namespace {

// Runs `body` with stderr sent to a file; returns the lines written.
template <class F> std::vector<std::string> CaptureStderr(F body) {
  test::TempDir dir;
  const std::string path = (dir.path() / "stderr").string();
  std::fflush(stderr);
  const int saved = dup(STDERR_FILENO);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, STDERR_FILENO);
  close(fd);
  body();
  std::fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  std::istringstream in(test::ReadFile(path));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(LogTest, BadLevelsAndFormatsAreRefusedNamingWhatIsValid) {
  EXPECT_EQ(log::Setup("t", "loud", "text"),
            "--log-level: \"loud\" is not a level; valid: debug, info, warning, error");
  EXPECT_EQ(log::Setup("t", "info", "xml"), "--log-format: \"xml\" is not a format; valid: text, json");
  EXPECT_EQ(log::Setup("t", "warning", "json"), "");
}

TEST(LogTest, TextLinesHaveTimeProgramAndLevelAndTheLevelFilters) {
  unsetenv("JOURNAL_STREAM");
  ASSERT_EQ(log::Setup("dsv3d", "info", "text"), "");
  const auto lines = CaptureStderr([] {
    log::Debug("hidden");
    log::Info("ready: here");
    log::Warning("--insecure: careful");
    log::Error("broken");
  });
  ASSERT_EQ(lines.size(), 3u);
  // "2026-12-02 16:31:00.123 dsv3d: ready: here"
  EXPECT_EQ(lines[0].size(), 23 + std::string(" dsv3d: ready: here").size()) << lines[0];
  EXPECT_EQ(lines[0].substr(23), " dsv3d: ready: here");
  EXPECT_EQ(lines[1].substr(23), " dsv3d: warning: --insecure: careful");
  EXPECT_EQ(lines[2].substr(23), " dsv3d: error: broken");
}

TEST(LogTest, JsonLinesAreObjectsWithEscapedMessages) {
  ASSERT_EQ(log::Setup("dsv3-agent", "debug", "json"), "");
  const auto lines = CaptureStderr([] {
    log::Debug("shown");
    log::Warning("a \"quoted\"\nsecond line");
  });
  ASSERT_EQ(lines.size(), 2u);
  const nlohmann::json a = nlohmann::json::parse(lines[0]), b = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(a["level"], "debug");
  EXPECT_EQ(a["program"], "dsv3-agent");
  EXPECT_EQ(a["message"], "shown");
  EXPECT_EQ(a["time"].get<std::string>().size(), std::string("2026-12-02T16:31:00.123Z").size()) << a;
  EXPECT_EQ(b["level"], "warning");
  EXPECT_EQ(b["message"], "a \"quoted\"\nsecond line");
}

TEST(LogTest, UnderJournaldLinesCarryPrioritiesInsteadOfTimes) {
  test::TempDir dir;
  const std::string path = (dir.path() / "journal").string();
  std::vector<std::string> lines;
  {
    // JOURNAL_STREAM names the file stderr points at while the messages are written.
    std::fflush(stderr);
    const int saved = dup(STDERR_FILENO);
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDERR_FILENO);
    close(fd);
    struct stat st {};
    fstat(STDERR_FILENO, &st);
    setenv("JOURNAL_STREAM", (std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino)).c_str(), 1);
    const std::string problem = log::Setup("dsv3d", "info", "text");
    log::Info("ready");
    log::Warning("careful");
    std::fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    unsetenv("JOURNAL_STREAM");
    ASSERT_EQ(problem, "");
  }
  std::istringstream in(test::ReadFile(path));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  EXPECT_EQ(lines, (std::vector<std::string>{"<6>dsv3d: ready", "<4>dsv3d: warning: careful"}));
}

}  // namespace
}  // namespace dsv3
