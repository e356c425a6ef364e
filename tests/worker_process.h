// dsv3-worker as a child process, for the tests that run it the way a launcher does.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace dsv3::test {

// Starts dsv3-worker in `cwd` with stdout+stderr to `log`, `env` added to its environment,
// and its address space limited to `address_space_bytes` when > 0.
inline pid_t StartWorker(const std::filesystem::path& cwd, const std::vector<std::string>& args,
                         const std::filesystem::path& log, const std::map<std::string, std::string>& env = {},
                         uint64_t address_space_bytes = 0) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (address_space_bytes > 0) {
      rlimit limit{address_space_bytes, address_space_bytes};
      if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(127);
    }
    if (chdir(cwd.c_str()) != 0) _exit(127);
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> argv;
    std::string exe = DSV3_WORKER_PATH;
    argv.push_back(exe.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// The exit status (128 + signal when killed); -1 after killing it at the timeout.
inline int WaitExit(pid_t pid, int timeout_s) {
  for (int i = 0; i < timeout_s * 10; ++i) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

// The metrics.jsonl records of one kind ("train", "eval", ...).
inline std::vector<nlohmann::json> Events(const std::filesystem::path& metrics, const std::string& kind) {
  std::vector<nlohmann::json> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("event", "") == kind) out.push_back(j);
  }
  return out;
}

}  // namespace dsv3::test
