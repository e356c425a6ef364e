// Where ranks run. One interface for the three allocators of ARCHITECTURE.md: `local`
// (fork/exec on this machine), `static` (dsv3-agent on each host) and `slurm` (sbatch/srun).
// The JobManager decides what runs when; an Allocator only places, starts, signals and
// watches ranks, and tells the manager when one ends.
//
// Thread-safety: every method may be called from any thread; the exit callback runs on an
// allocator thread and must not call back into the allocator while holding its own locks.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dsv3/server/job_store.h"

namespace dsv3::server {

struct Placement {
  std::vector<std::string> hosts;  // one per rank
  std::string master_addr;         // rank 0's host, for MASTER_ADDR
};

struct RankLaunch {
  int rank = 0;
  std::vector<std::string> argv;              // argv[0] is the program
  std::map<std::string, std::string> env;     // added to the allocator's own environment
  std::string cwd;
  std::string log_path;                       // stdout and stderr, appended
};

struct LaunchSpec {
  int64_t job_id = 0;
  int attempt = 0;
  std::vector<RankLaunch> ranks;
};

// What the allocator knows about a rank it started (or adopted).
struct LaunchedRank {
  int rank = 0;
  int64_t pid = 0;
  int64_t proc_start = 0;
  std::string host;
};

struct RankExit {
  int64_t job_id = 0;
  int attempt = 0;
  int rank = 0;
  int exit_code = 0;     // 128+N when killed by signal N; -1 when unknown (adopted rank)
  std::string how;       // "exited with status 1", "killed by signal 9 (Killed)", ...
};

class Allocator {
 public:
  using ExitCallback = std::function<void(const RankExit&)>;
  virtual ~Allocator() = default;

  virtual std::string Name() const = 0;
  virtual int TotalSlots() const = 0;
  virtual int FreeSlots() const = 0;
  // Called once before any launch; exits are reported through it.
  virtual void SetExitCallback(ExitCallback cb) = 0;

  // Reserves slots for `num_ranks` ranks of `job_id`, or nullopt when they do not fit now.
  // Never blocks. A job holds its reservation across restarts until Release().
  virtual std::optional<Placement> Reserve(int64_t job_id, int num_ranks) = 0;
  // Starts every rank of one attempt on its reserved slots, each in its own process
  // group. Fails (starting nothing that is left running) when a rank cannot start.
  virtual absl::StatusOr<std::vector<LaunchedRank>> Launch(const LaunchSpec& spec) = 0;
  // Sends `signal` to every live rank of the job (its process group).
  virtual void Signal(int64_t job_id, int signal) = 0;
  // SIGKILL to every live rank's process group.
  virtual void Kill(int64_t job_id) = 0;
  // Frees the job's slots; its ranks must have exited.
  virtual void Release(int64_t job_id) = 0;
  // After a controller restart: takes over the ranks of `job_id` that the store lists and
  // that are still alive (reserving their slots); returns the ranks it adopted. Their exits
  // are reported like any other, with exit_code -1 when the status cannot be known.
  virtual std::vector<int> Adopt(int64_t job_id, int attempt, int num_ranks, const std::vector<RankRecord>& ranks) = 0;
  // Live ranks of the job.
  virtual int LiveRanks(int64_t job_id) const = 0;
};

}  // namespace dsv3::server
