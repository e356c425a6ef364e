// sbatch scripts from a config's `slurm` section: the one place that turns partition, nodes,
// tasks, GPUs, time, memory, output files, account, qos and extra_args into #SBATCH lines
// and the srun line that starts one dsv3-worker per task. dsv3d uses it for managed jobs
// (ranks report to the controller) and `dsv3ctl slurm script` for standalone ones (ranks log
// to files). Ranks find their place from SLURM_PROCID and friends (worker/dist/launch.h).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dsv3/common/config.h"

namespace dsv3::config {

struct SlurmScriptOptions {
  std::string worker;                        // absolute path of dsv3-worker on the compute nodes
  std::vector<std::string> worker_args;      // after the program: --config X [--resume Y] ...
  std::map<std::string, std::string> env;    // exported to every task
  std::string chdir;                         // the job's folder (#SBATCH --chdir); "" = submit dir
  std::string rank_output;                   // srun --output pattern, e.g. logs/rank_%t.log
  std::string job_name;                      // "" = slurm.job_name
  int64_t signal_margin_s = -1;              // SIGUSR2 this long before the time limit; -1 = default
  std::string header_comment;                // one or more lines after the shebang, without '#'
};

// Seconds in a Slurm time limit ("30", "10:00", "1:00:00", "2-12", "1-00:00:00");
// nullopt for UNLIMITED/infinite or a value that is not a time limit.
std::optional<int64_t> SlurmTimeSeconds(const std::string& time);

// How long before the time limit the ranks get their checkpoint-and-stop signal when the
// options do not say: 2 minutes, or half the limit when that is shorter (a 1-minute test
// partition still gets a signal in time).
int64_t DefaultSignalMargin(const std::string& time);

// GPUs asked per node: slurm.gpus_per_node, or one per task when the config leaves it unset
// (a gloo config has its 0 written by ValidateAndDerive).
inline int64_t SlurmGpusPerNode(const SlurmConfig& s) { return s.gpus_per_node.value_or(s.ntasks_per_node); }

// The whole script. Values are shell-quoted; nothing in it is evaluated but the srun line.
std::string RenderSlurmScript(const SlurmConfig& slurm, const SlurmScriptOptions& options);

// "2 node(s) x 4 task(s): rank = SLURM_PROCID (0..7), ..." for dry runs.
std::string DescribeSlurmLayout(const SlurmConfig& slurm);

// The signal ranks treat as "time limit ahead: checkpoint and stop" (Slurm's --signal).
inline constexpr const char* kTimeLimitSignalName = "USR2";

}  // namespace dsv3::config
