// The sbatch script a config's slurm section becomes: exact text for a GPU config (the
// golden test), time limits and signal margins.
#include "dsv3/common/slurm_script.h"

#include <gtest/gtest.h>

namespace dsv3::config {
namespace {

TEST(SlurmScript, GpuConfigGivesTheExpectedScript) {
  SlurmConfig s;
  s.enabled = true;
  s.partition = "gpu";
  s.nodes = 2;
  s.ntasks_per_node = 8;
  s.gpus_per_node = 8;
  s.cpus_per_task = 12;
  s.time = "24:00:00";
  s.mem = "480G";
  s.job_name = "deepseek_v3_train";
  s.account = "ml-team";
  s.qos = "high";
  s.extra_args = {"--exclusive", "--constraint=h100"};
  SlurmScriptOptions o;
  o.worker = "/opt/dsv3/bin/dsv3-worker";
  o.worker_args = {"--config", "/scratch/jobs/7/config.json", "--resume", "/scratch/it's here"};
  o.env = {{"DSV3_CONTROLLER", "ctl:50051"}, {"DSV3_JOB_ID", "7"}, {"MASTER_PORT", "29500"}};
  o.chdir = "/scratch/jobs/7";
  o.rank_output = "/scratch/jobs/7/logs/rank_%t.log";
  o.header_comment = "dsv3 job 7\nsecond line";
  const std::string expected = R"(#!/bin/bash
# dsv3 job 7
# second line
#SBATCH --job-name=deepseek_v3_train
#SBATCH --partition=gpu
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --gres=gpu:8
#SBATCH --time=24:00:00
#SBATCH --mem=480G
#SBATCH --output=logs/slurm-%j.out
#SBATCH --error=logs/slurm-%j.err
#SBATCH --account=ml-team
#SBATCH --qos=high
#SBATCH --signal=USR2@120
#SBATCH --chdir=/scratch/jobs/7
#SBATCH --exclusive
#SBATCH --constraint=h100

set -eu
export DSV3_CONTROLLER='ctl:50051'
export DSV3_JOB_ID='7'
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export OPENBLAS_NUM_THREADS=1
echo "dsv3: slurm job $SLURM_JOB_ID: $SLURM_NNODES node(s) [$SLURM_JOB_NODELIST], $SLURM_NTASKS rank(s), rendezvous on port $MASTER_PORT"
mkdir -p '/scratch/jobs/7/logs'
srun --kill-on-bad-exit=1 --output='/scratch/jobs/7/logs/rank_%t.log' --open-mode=append '/opt/dsv3/bin/dsv3-worker' '--config' '/scratch/jobs/7/config.json' '--resume' '/scratch/it'\''s here'
)";
  EXPECT_EQ(RenderSlurmScript(s, o), expected);
  EXPECT_EQ(DescribeSlurmLayout(s),
            "2 node(s) x 8 task(s) = 16 rank(s); 12 CPU(s) per task, 8 GPU(s) per node (rank r uses GPU "
            "SLURM_LOCALID);\n  rank = SLURM_PROCID (0..15), local rank = SLURM_LOCALID, MASTER_ADDR = the first "
            "node of SLURM_JOB_NODELIST, MASTER_PORT = 20000 + job id % 20000");
}

TEST(SlurmScript, UnsetGpusMeanOnePerTaskAndUnsetPartitionIsSlurmsDefault) {
  SlurmConfig s;
  s.ntasks_per_node = 4;
  SlurmScriptOptions o;
  o.worker = "w";
  const std::string script = RenderSlurmScript(s, o);
  EXPECT_NE(script.find("#SBATCH --gres=gpu:4\n"), std::string::npos) << script;
  EXPECT_EQ(script.find("--partition"), std::string::npos) << script;
}

TEST(SlurmScript, CpuConfigHasNoGresAndNoOptionalLines) {
  SlurmConfig s;
  s.gpus_per_node = 0;
  s.time = "UNLIMITED";
  SlurmScriptOptions o;
  o.worker = "w";
  const std::string script = RenderSlurmScript(s, o);
  EXPECT_EQ(script.find("--gres"), std::string::npos);
  EXPECT_EQ(script.find("--partition"), std::string::npos);
  EXPECT_EQ(script.find("--account"), std::string::npos);
  EXPECT_EQ(script.find("--signal"), std::string::npos);  // no time limit, no warning
  EXPECT_NE(script.find("\nsrun --kill-on-bad-exit=1 'w'\n"), std::string::npos);
}

TEST(SlurmScript, DirectivesCannotSmuggleCommands) {
  SlurmConfig s;
  s.job_name = "x\nrm -rf /";
  SlurmScriptOptions o;
  o.worker = "w";
  const std::string script = RenderSlurmScript(s, o);
  EXPECT_NE(script.find("#SBATCH --job-name=x rm -rf /\n"), std::string::npos);
  EXPECT_EQ(script.find("\nrm -rf"), std::string::npos);
}

TEST(SlurmScript, TimeLimitsAndSignalMargins) {
  EXPECT_EQ(SlurmTimeSeconds("30"), 1800);
  EXPECT_EQ(SlurmTimeSeconds("10:30"), 630);
  EXPECT_EQ(SlurmTimeSeconds("1:00:00"), 3600);
  EXPECT_EQ(SlurmTimeSeconds("2-12"), 2 * 86400 + 12 * 3600);
  EXPECT_EQ(SlurmTimeSeconds("1-00:30:15"), 86400 + 30 * 60 + 15);
  EXPECT_EQ(SlurmTimeSeconds("UNLIMITED"), std::nullopt);
  EXPECT_EQ(SlurmTimeSeconds("soon"), std::nullopt);
  EXPECT_EQ(DefaultSignalMargin("24:00:00"), 120);
  EXPECT_EQ(DefaultSignalMargin("1"), 30);  // half of a 1-minute limit
  EXPECT_EQ(DefaultSignalMargin("infinite"), 0);
}

}  // namespace
}  // namespace dsv3::config
