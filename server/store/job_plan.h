// What dsv3d reads of a job's config, typed. The config is parsed once, at submit
// (jobs/job_config.h), into a JobPlan that is stored with the job (JobRecord::plan, one
// column of the store) and travels with it: the allocators and the supervision read the
// plan, never the config's JSON. The rank count and the folders, also decided at submit,
// are the record's own fields (num_ranks, output_dir, checkpoint_dir, tensorboard_dir).
//
// Also here: FieldProblem, why a job cannot be submitted, as every room reports it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "dsv3/common/config.h"

namespace dsv3::server {

struct JobPlan {
  // Where the ranks run: "slurm" when the config asks for Slurm (slurm.enabled, or
  // distributed.launcher "slurm"); "" for the daemon's own allocator.
  std::string launcher;
  // training.intra_op_threads when the config sets it (> 0): the ranks use that, not the
  // share of cores dsv3d would give them.
  int64_t intra_op_threads = 0;
  // The config's slurm section as written (defaults where absent). The Slurm allocator
  // fits it to the job's rank count (FitSlurmSection).
  config::SlurmConfig slurm;
  // How dsv3d tells a hung or slow job from a working one (jobs/watchdog.h).
  config::WatchdogConfig watchdog;
  // training.save_interval when checkpointing is enabled, else 0: the checkpoint-age alert
  // compares steps since the last checkpoint with it (dsv3_job_checkpoint_interval_steps).
  int64_t save_interval = 0;

  bool WantsSlurm() const { return launcher == "slurm"; }
};

// The plan of a loaded, valid config.
JobPlan PlanFromConfig(const config::Config& config);

// The store's encoding (a JSON object; the slurm section through the config schema,
// config::SlurmToJson) and back; nullopt for text that is not a plan.
std::string PlanToJson(const JobPlan& plan);
std::optional<JobPlan> PlanFromJson(const std::string& text);

// Why a submission is refused, or what it is warned about: the field at fault (a JSON
// pointer into the config, or a request field such as "num_ranks"), what is wrong with it,
// and a stable code a client can branch on (sent as FieldError.code).
struct FieldProblem {
  std::string path, message;
  std::string code;  // one of the kProblem* names below
};

inline constexpr char kProblemInvalidConfig[] = "invalid_config";      // the config guide's rules
inline constexpr char kProblemPathNotAllowed[] = "path_not_allowed";   // outside a confined user's roots
inline constexpr char kProblemInvalidRequest[] = "invalid_request";    // the request's own fields (name, ranks)
inline constexpr char kProblemExceedsCapacity[] = "exceeds_capacity";  // more ranks than the allocator can hold
inline constexpr char kProblemSlurmLayout[] = "slurm_layout";          // the slurm section does not fit the ranks
inline constexpr char kProblemNoSlurm[] = "slurm_unavailable";         // Slurm asked for, this dsv3d has none

}  // namespace dsv3::server
