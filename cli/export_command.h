// `dsv3ctl export-hf CHECKPOINT OUT_DIR`: a checkpoint as a HuggingFace model folder.
#pragma once

#include <CLI/CLI.hpp>

#include "config_commands.h"

namespace dsv3::cli {

void AddExportCommand(CLI::App& app, CliContext& ctx);

}  // namespace dsv3::cli
