// Running a short external command (sbatch, squeue, scancel, sinfo) and capturing what it
// prints. No shell: the argv is executed as given, so nothing in a value is interpreted.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace dsv3::procs {

struct CommandResult {
  int exit_code = -1;  // 128+N when killed by signal N; -1 when it could not start
  std::string out, err;
  bool timed_out = false;
  bool ok() const { return exit_code == 0 && !timed_out; }
  // "sbatch exited with status 1: sbatch: error: invalid partition specified: gpu"
  std::string Describe(const std::string& what) const;
};

// Runs argv[0] (looked up in PATH) and waits up to `timeout`, then kills it.
CommandResult RunCommand(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

}  // namespace dsv3::procs
