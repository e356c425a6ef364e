// Using a trained model on this machine: `dsv3ctl generate CHECKPOINT|HF_DIR --prompt ...`
// samples from it; `dsv3ctl eval CHECKPOINT|HF_DIR [--config X] [--text FILE]` runs the
// config's validation on it or scores a text. dsv3ctl holds no LibTorch, so each verb checks
// its options and runs `dsv3-worker generate|eval` (worker/inference_commands.h) with them,
// on this terminal.
#pragma once

#include <CLI/CLI.hpp>

#include "config_commands.h"

namespace dsv3::cli {

void AddModelCommands(CLI::App& app, CliContext& ctx);

}  // namespace dsv3::cli
