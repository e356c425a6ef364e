// Rank processes on this host: starting them, signalling them, reaping them and reporting
// how each one ended. dsv3d's local allocator and every dsv3-agent supervise ranks through
// this one class; neither knows how the other places them.
//
// Each rank runs in its own process group with stdout and stderr appended to its log file,
// so it outlives a controller crash and keeps its logs.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv3::procs {

// One rank to start.
struct RankLaunch {
  int rank = 0;
  std::vector<std::string> argv;              // argv[0] is the program (an absolute path or one found in PATH by the caller)
  std::map<std::string, std::string> env;     // added to (and overriding) this process's environment
  std::string cwd;
  std::string log_path;                       // stdout and stderr, appended
};

// How a rank ended.
struct RankExit {
  int64_t job_id = 0;
  int attempt = 0;
  int rank = 0;
  int exit_code = 0;     // 128+N when killed by signal N; -1 when unknown (adopted rank)
  std::string how;       // "exited with status 1", "killed by signal 9 (Killed)", ...
};

// A rank that was started (or adopted): its pid and start time name the process uniquely.
struct StartedRank {
  int rank = 0;
  int64_t pid = 0;
  int64_t proc_start = 0;
};

// One log past `cap` bytes is copied to <log>.1 (replacing the previous one) and emptied, as
// logrotate's copytruncate does: the writer keeps appending (O_APPEND) to the emptied file.
// Returns whether it rotated. What SetLogCap does every kLogCapInterval, and what dsv3d does
// for the rank logs Slurm's srun writes.
bool RotateLogIfOver(const std::string& path, int64_t cap);

// Thread-safety: every method may be called from any thread. The exit callback runs on the
// watcher thread, never while this object's own lock is held, so it may call Signal or
// Live; it must not call SetExitCallback.
class RankProcesses {
 public:
  using ExitCallback = std::function<void(const RankExit&)>;

  // Starts the watcher thread that reaps children (every 100 ms) and polls adopted
  // processes. `die_with_parent`: ranks get SIGKILL when the thread that started them ends
  // with its process (dsv3-agent: a lost agent means lost ranks, never orphans still holding
  // their peers in collectives); Start must then be called from a thread that lives as long
  // as the process.
  explicit RankProcesses(bool die_with_parent = false);
  // Stops the watcher; the ranks keep running.
  ~RankProcesses();
  RankProcesses(const RankProcesses&) = delete;
  RankProcesses& operator=(const RankProcesses&) = delete;

  // Replaces the exit callback; also waits for a callback in progress, so that after this
  // returns the old one never runs again.
  void SetExitCallback(ExitCallback cb);

  // Starts every rank of one attempt, each in its own process group. All or nothing: when
  // one cannot start (its log cannot be opened, exec fails) the ranks already started are
  // killed and the error names that rank. Blocks until each child has exec'd or failed to.
  absl::StatusOr<std::vector<StartedRank>> Start(int64_t job_id, int attempt, const std::vector<RankLaunch>& ranks);

  // Takes over a rank started by an earlier process (a controller restart). Returns false
  // when that process is gone or the pid now names another process (`proc_start` differs;
  // 0 accepts any). Its exit is reported with exit_code -1: it is not our child. `log_path`
  // ("" = unknown) is capped like a started rank's.
  bool Adopt(int64_t job_id, int attempt, int rank, int64_t pid, int64_t proc_start, const std::string& log_path = "");

  // Caps every rank log at `max_bytes` (0 = no cap, the default): checked every 2 s, a log
  // past the cap is copied to <log>.1 (replacing the previous one) and emptied, so a rank's
  // output takes at most about twice the cap. The rank keeps writing (its log is opened
  // O_APPEND); lines it writes between the copy and the emptying are lost, as with
  // logrotate's copytruncate.
  void SetLogCap(int64_t max_bytes);
  // How often a capped log's size is checked.
  static constexpr std::chrono::seconds kLogCapInterval{2};

  // Sends `signal` to the process group of every live rank of the job.
  void Signal(int64_t job_id, int signal);
  // Live ranks of the job, and the jobs that have any.
  int Live(int64_t job_id) const;
  std::vector<int64_t> Jobs() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// A process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or 0 when it
// is gone or a zombie. Together with the pid it names a process uniquely.
int64_t ProcessStartTime(int64_t pid);

}  // namespace dsv3::procs
