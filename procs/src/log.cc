#include "dsv3/procs/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

namespace dsv3::log {
namespace {

enum class Format { kText, kJson };

// Whether stderr is the stream journald gave this service (JOURNAL_STREAM=<dev>:<inode>).
bool StderrIsJournal() {
  const char* v = std::getenv("JOURNAL_STREAM");
  if (v == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(v, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  return fstat(STDERR_FILENO, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

const char* LevelName(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::debug: return "debug";
    case spdlog::level::warn: return "warning";
    case spdlog::level::err: return "error";
    default: return "info";
  }
}

// syslog priorities, as journald reads them from "<N>" prefixes.
int Priority(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::debug: return 7;
    case spdlog::level::warn: return 4;
    case spdlog::level::err: return 3;
    default: return 6;
  }
}

class LineSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  LineSink(std::string program, Format format, bool journal)
      : program_(std::move(program)), format_(format), journal_(journal) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const std::string text(msg.payload.data(), msg.payload.size());
    const auto since_epoch = msg.time.time_since_epoch();
    const std::time_t secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
    const int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count() % 1000);
    std::tm tm{};
    char stamp[40];
    std::string line;
    if (format_ == Format::kJson) {
      gmtime_r(&secs, &tm);
      std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
      char with_ms[48];
      std::snprintf(with_ms, sizeof(with_ms), "%s.%03dZ", stamp, ms);
      line = nlohmann::ordered_json{{"time", with_ms}, {"level", LevelName(msg.level)}, {"program", program_},
                                    {"message", text}}
                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    } else {
      const std::string level = msg.level == spdlog::level::info ? "" : std::string(LevelName(msg.level)) + ": ";
      if (journal_) {
        line = "<" + std::to_string(Priority(msg.level)) + ">" + program_ + ": " + level + text;
      } else {
        localtime_r(&secs, &tm);
        std::strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
        char with_ms[48];
        std::snprintf(with_ms, sizeof(with_ms), "%s.%03d", stamp, ms);
        line = std::string(with_ms) + " " + program_ + ": " + level + text;
      }
    }
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
  }
  void flush_() override { std::fflush(stderr); }

 private:
  const std::string program_;
  const Format format_;
  const bool journal_;
};

std::mutex g_mu;
std::shared_ptr<spdlog::logger> g_logger;

std::shared_ptr<spdlog::logger> MakeLogger(const std::string& program, Format format, spdlog::level::level_enum l) {
  auto sink = std::make_shared<LineSink>(program, format, StderrIsJournal());
  auto logger = std::make_shared<spdlog::logger>(program, std::move(sink));
  logger->set_level(l);
  return logger;
}

std::shared_ptr<spdlog::logger> Logger() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_logger) g_logger = MakeLogger("dsv3", Format::kText, spdlog::level::info);
  return g_logger;
}

}  // namespace

std::string Setup(const std::string& program, const std::string& level, const std::string& format) {
  spdlog::level::level_enum l;
  if (level == "debug") l = spdlog::level::debug;
  else if (level == "info") l = spdlog::level::info;
  else if (level == "warning" || level == "warn") l = spdlog::level::warn;
  else if (level == "error") l = spdlog::level::err;
  else return "--log-level: \"" + level + "\" is not a level; valid: " + kLevels;
  Format f;
  if (format == "text") f = Format::kText;
  else if (format == "json") f = Format::kJson;
  else return "--log-format: \"" + format + "\" is not a format; valid: " + kFormats;
  std::lock_guard<std::mutex> lock(g_mu);
  g_logger = MakeLogger(program, f, l);
  return "";
}

void Debug(const std::string& message) { Logger()->debug(message); }
void Info(const std::string& message) { Logger()->info(message); }
void Warning(const std::string& message) { Logger()->warn(message); }
void Error(const std::string& message) { Logger()->error(message); }

}  // namespace dsv3::log
