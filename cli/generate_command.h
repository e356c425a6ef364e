// `dsv3ctl generate CHECKPOINT|HF_DIR --prompt ...`: samples from a trained model on this
// machine. dsv3ctl holds no LibTorch, so the verb checks its options and runs
// `dsv3-worker generate` (worker/generate_command.h) with them, on this terminal.
#pragma once

#include <CLI/CLI.hpp>

#include "config_commands.h"

namespace dsv3::cli {

void AddGenerateCommand(CLI::App& app, CliContext& ctx);

}  // namespace dsv3::cli
