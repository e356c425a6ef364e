// `dsv3ctl slurm script CONFIG [-o FILE]` and `dsv3ctl slurm submit CONFIG`: Slurm without
// the controller (the guide's "Generate SLURM Script Only" and --submit). The script's srun
// starts one dsv3-worker per task; ranks find their place from Slurm's environment and log
// to files; nothing reports to a dsv3d.
#pragma once

#include <CLI/CLI.hpp>

#include "config_commands.h"

namespace dsv3::cli {

void AddSlurmCommands(CLI::App& app, CliContext& ctx);

}  // namespace dsv3::cli
