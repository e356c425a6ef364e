#include "stack_dump.h"

#include <cxxabi.h>
#include <dirent.h>
#include <execinfo.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

namespace dsv3::worker {
namespace {

constexpr int kMaxFrames = 64;

// One request at a time (dumps are serialized by g_dump_mu): the thread asked to record
// its frames, and where. Only async-signal-safe work happens in the handler: backtrace()
// after its first call (made at install, which loads libgcc's unwinder).
std::atomic<pid_t> g_target{0};
void* g_frames[kMaxFrames];
std::atomic<int> g_depth{-1};
std::mutex g_dump_mu;

int StackSignal() { return SIGRTMIN + 4; }

pid_t Tid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

void OnStackSignal(int) {
  const int saved = errno;
  if (g_target.load() == Tid()) {
    const int n = backtrace(g_frames, kMaxFrames);
    g_depth.store(n);
  }
  errno = saved;
}

std::string ThreadName(pid_t tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/comm");
  std::string name;
  std::getline(in, name);
  return name;
}

// "binary(_ZN4dsv3...+0x1c) [0x...]" -> "dsv3::...(...) +0x1c  (binary)"
std::string Symbolize(const char* raw) {
  std::string line = raw;
  const size_t open = line.find('('), plus = line.find('+', open == std::string::npos ? 0 : open);
  const size_t close = line.find(')', open == std::string::npos ? 0 : open);
  if (open == std::string::npos || close == std::string::npos) return line;
  std::string object = line.substr(0, open);
  if (const size_t slash = object.rfind('/'); slash != std::string::npos) object = object.substr(slash + 1);
  const std::string mangled = plus != std::string::npos && plus < close ? line.substr(open + 1, plus - open - 1) : "";
  const std::string offset = plus != std::string::npos && plus < close ? line.substr(plus, close - plus) : "";
  if (mangled.empty()) return "?? " + line.substr(close + 1) + "  (" + object + ")";
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : mangled;
  std::free(demangled);
  return name + " " + offset + "  (" + object + ")";
}

void AppendFrames(std::ostringstream& out, void* const* frames, int depth, int skip) {
  char** symbols = backtrace_symbols(frames, depth);
  for (int i = skip; i < depth; ++i) {
    out << "  #" << i - skip << " " << (symbols != nullptr ? Symbolize(symbols[i]) : "?") << "\n";
  }
  std::free(symbols);
}

}  // namespace

void InstallStackDumpHandler() {
  void* warm[2];
  (void)backtrace(warm, 2);  // loads the unwinder now, not inside a signal handler
  struct sigaction sa {};
  sa.sa_handler = OnStackSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(StackSignal(), &sa, nullptr);
}

std::string DumpAllThreadStacks(std::chrono::milliseconds per_thread) {
  std::lock_guard<std::mutex> lock(g_dump_mu);
  std::vector<pid_t> tids;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') tids.push_back(static_cast<pid_t>(std::atoi(e->d_name)));
    }
    closedir(d);
  }
  const pid_t self = Tid();
  std::ostringstream out;
  out << tids.size() << " threads\n";
  for (pid_t tid : tids) {
    out << "\nthread " << tid << " (" << ThreadName(tid) << ")" << (tid == self ? " [the thread writing this dump]" : "")
        << "\n";
    if (tid == self) {
      void* frames[kMaxFrames];
      AppendFrames(out, frames, backtrace(frames, kMaxFrames), 1);
      continue;
    }
    g_depth.store(-1);
    g_target.store(tid);
    if (syscall(SYS_tgkill, getpid(), tid, StackSignal()) != 0) {
      out << "  (gone)\n";
      continue;
    }
    const auto deadline = std::chrono::steady_clock::now() + per_thread;
    while (g_depth.load() < 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const int depth = g_depth.load();
    g_target.store(0);
    if (depth < 0) {
      out << "  (did not answer within " << per_thread.count() << " ms: signals blocked)\n";
      continue;
    }
    // Frames 0-1 are the handler and the signal trampoline.
    AppendFrames(out, g_frames, depth, 2);
  }
  return out.str();
}

}  // namespace dsv3::worker
