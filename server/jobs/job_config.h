// Server-side preparation of a submitted config: the server never trusts the client, so it
// parses and validates the JSON again, then fixes where the job's files go.
//
// Paths: ranks run in the job's own folder (<state-dir>/jobs/<id>), so relative output paths
// (output_dir, checkpointing.dir, the TensorBoard log_dir) land there and two jobs of one
// config never share outputs. Relative input paths (data sources, tokenizer model,
// validation sources, data.cache_dir, deepspeed.config_file, checkpointing.resume_from) are
// made absolute against the submitter's base folder, so they mean what they meant where
// the user typed them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "store/job_plan.h"

namespace dsv3::server {

struct PreparedConfig {
  std::vector<FieldProblem> errors, warnings;
  nlohmann::json resolved;  // what the ranks read (input paths absolute)
  JobPlan plan;             // what dsv3d reads of it (meaningful only when ok())
  std::string experiment_name;
  int64_t total_steps = 0;
  int64_t max_restarts = 0;
  int64_t intra_op_threads = 0;
  int64_t world_size = 0;  // the ranks given, or (0 given) those the config implies
  double memory_per_rank = 0;    // bytes one rank holds by the estimator (config/estimator.h)
  std::string memory_breakdown;  // "weights 1.0 GiB, gradients ..."
  std::vector<std::string> grid;  // what each rank holds (config::DescribeGrid), when ranks > 1
  // As the config names them (relative ones are relative to the job folder).
  std::string output_dir, checkpoint_dir, tensorboard_dir;
  bool ok() const { return errors.empty(); }
};

// Where a user of a shared controller may have a job write and read (README "Shared
// controllers"). Unconfined callers (the trusted local user, admins) keep the paths they name.
struct PathPolicy {
  bool confined = false;
  std::string work_root;                // the user's own folder: outputs and inputs
  std::vector<std::string> read_roots;  // shared inputs (datasets, tokenizers)
  std::string jobs_root;                // <state-dir>/jobs: a job's folder is readable by its owner
  std::function<bool(int64_t job_id)> owns_job;
};

// Validates `config_json` for a job of `num_ranks` ranks (0: as many as the config implies). `resume_from` (non-empty)
// overrides checkpointing.resume_from. Relative input paths resolve against `base_dir`.
// With a confined `policy`, every output path (output_dir, checkpointing.dir, the TensorBoard
// log_dir, data.cache_dir, slurm output/error) must stay inside the job's folder (relative
// ones) or the user's work root, and every input path inside the work root, a read root or
// one of the user's job folders; each escape (an absolute path elsewhere, `..`, a symlink
// leading out) is an error naming the field.
PreparedConfig PrepareJobConfig(const std::string& config_json, int num_ranks, const std::string& resume_from,
                                const std::string& base_dir, const PathPolicy& policy = {});

// `path` made absolute against `dir` and normalized.
std::string AbsoluteUnder(const std::string& dir, const std::string& path);

}  // namespace dsv3::server
