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
#include "dsv3/procs/rank_processes.h"
#include "store/job_store.h"

namespace dsv3::server {

struct Placement {
  std::vector<std::string> hosts;  // one per rank; empty when an external scheduler places them
  std::string master_addr;         // rank 0's host, for MASTER_ADDR ("" when the ranks find it)
};

// One rank to start and how a rank ended: the rank-process supervision's own types.
using procs::RankExit;
using procs::RankLaunch;

struct LaunchSpec {
  int64_t job_id = 0;
  int attempt = 0;
  std::vector<RankLaunch> ranks;
  // The job as stored: its name, folder and resolved config (Slurm reads the `slurm`
  // section; agents get the config file when their host does not share the job folder).
  JobRecord job;
};

// The launcher variables the allocator or the external scheduler owns: Slurm replaces them
// with SLURM_PROCID and friends, so they are not part of what every rank shares.
bool IsPerRankVariable(const std::string& name);

// Where an allocation stands in an external scheduler (a Slurm job), or an agent's view.
struct AllocationUpdate {
  int64_t job_id = 0;
  int attempt = 0;
  std::string allocator;    // "slurm"
  std::string external_id;  // the Slurm job id
  std::string state;        // PENDING, RUNNING, COMPLETED, ... as the scheduler says
  std::string reason;       // the scheduler's reason (Resources, Priority, TimeLimit, ...)
  bool started = false;     // the ranks have been started (the startup timeout runs from here)
};

// One host of the allocator, for `dsv3ctl nodes` and /metrics.
struct NodeInfo {
  std::string name, address, state;  // state: up | lost | idle | alloc | down ...
  int slots = 0, used = 0;
  int64_t last_heartbeat_ms = 0;     // 0 when the allocator has no heartbeats (local, slurm)
  std::vector<int64_t> jobs;
};

// What the allocator knows about a rank it started (or adopted).
struct LaunchedRank {
  int rank = 0;
  int64_t pid = 0;
  int64_t proc_start = 0;
  std::string host;
};

class Allocator {
 public:
  using ExitCallback = std::function<void(const RankExit&)>;
  using AllocationCallback = std::function<void(const AllocationUpdate&)>;
  virtual ~Allocator() = default;

  virtual std::string Name() const = 0;
  virtual int TotalSlots() const = 0;
  virtual int FreeSlots() const = 0;
  // Called once before any launch; exits are reported through it.
  virtual void SetExitCallback(ExitCallback cb) = 0;
  // External schedulers report their allocations' states through it (default: none).
  virtual void SetAllocationCallback(AllocationCallback) {}

  // Reserves slots for the job's `num_ranks` ranks, or nullopt when they do not fit now.
  // Never blocks. A job holds its reservation across restarts until Release(), unless a
  // host of it is lost (static): then the next Reserve places the job again.
  virtual std::optional<Placement> Reserve(const JobRecord& job) = 0;
  // Says why Reserve refused, for the job's state reason ("needs 2 slots, 1 free on 1 agent").
  virtual std::string WhyNotPlaced(const JobRecord& job) const {
    return "needs " + std::to_string(job.num_ranks) + " slot(s); " + std::to_string(FreeSlots()) + " free";
  }
  // Why this allocator can never run the job (a job larger than every host, a Slurm
  // layout that does not fit its ranks, ...), or nullopt when it can.
  virtual std::optional<FieldProblem> CanRun(const JobRecord& job) const {
    if (job.num_ranks > TotalSlots()) {
      return FieldProblem{"num_ranks",
                          "the job needs " + std::to_string(job.num_ranks) + " slots but the " + Name() +
                              " allocator has " + std::to_string(TotalSlots()) + " (dsv3d --slots)",
                          kProblemExceedsCapacity};
    }
    return std::nullopt;
  }
  // The memory of the host a job's ranks share, when this allocator knows it (local: this
  // machine's); a job the estimator says cannot fit is refused at submit.
  virtual std::optional<double> HostMemoryBytes(const JobRecord&) const { return std::nullopt; }
  // What Launch would do with `spec`, for dry runs: one line per rank, or the sbatch script.
  virtual std::string DescribeLaunch(const LaunchSpec& spec) const;
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
  // `external_id` is the allocation's id in an external scheduler (the Slurm job), if any.
  virtual std::vector<int> Adopt(const JobRecord& job, const std::vector<RankRecord>& ranks,
                                 const std::string& external_id) = 0;
  // Live ranks of the job.
  virtual int LiveRanks(int64_t job_id) const = 0;
  // The hosts, for `dsv3ctl nodes`.
  virtual std::vector<NodeInfo> Nodes() const = 0;
};

}  // namespace dsv3::server
