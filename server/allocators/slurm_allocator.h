// The `slurm` allocator: each attempt of a job is one Slurm batch job. dsv3d writes the
// sbatch script from the config's `slurm` section (common/slurm_script.h), where one srun
// starts one dsv3-worker per task; ranks learn their place from SLURM_PROCID and friends and
// report to dsv3d over gRPC. It submits with `sbatch --parsable`, follows the job with
// `squeue` (falling back to `scontrol show job` once squeue forgets it), and cancels with
// `scancel`. Slurm places the ranks, so there is no slot accounting here: Reserve always
// succeeds and the Slurm queue is the queue.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "allocators/allocator.h"

namespace dsv3::server {

struct SlurmOptions {
  std::chrono::milliseconds poll_interval{1000};
  std::chrono::milliseconds command_timeout{30000};
  int64_t signal_margin_s = -1;  // SIGUSR2 before the time limit; -1: DefaultSignalMargin
  bool probe = true;             // ask the cluster (sinfo) before saying it is there
  // The rank logs srun writes (<job>/logs/rank_<r>.log, opened for appending) are capped as
  // the local ones are (procs::RotateLogIfOver) while their Slurm job runs; 0 = no cap. dsv3d
  // reads them where it serves `logs`, so it can rotate them there.
  int64_t max_rank_log_bytes = 0;
};

// Fails when the Slurm client tools are not in PATH or (with `probe`) the cluster does not
// answer within 10 s.
absl::StatusOr<std::unique_ptr<Allocator>> MakeSlurmAllocator(const SlurmOptions& options);

// Slurm job states, mapped for the manager: whether the allocation has ended, and the exit
// code its ranks are reported with (0 COMPLETED, 143 CANCELLED, 1 every other end).
struct SlurmStateMeaning {
  bool ended = false, running = false;
  int exit_code = 0;
};
SlurmStateMeaning InterpretSlurmState(const std::string& state);

// The allocator of a daemon: `primary` for every job, except that jobs whose plan asks for
// Slurm (JobPlan::WantsSlurm) go to `slurm` (which may be null: such jobs are then refused with a reason).
std::unique_ptr<Allocator> MakeRoutingAllocator(std::unique_ptr<Allocator> primary, std::unique_ptr<Allocator> slurm,
                                                std::string slurm_unavailable_reason);

}  // namespace dsv3::server
