// `dsv3ctl data synth|prepare|train-tokenizer|sample`: the data pipeline's verbs.
#pragma once

#include <CLI/CLI.hpp>

#include "config_commands.h"

namespace dsv3::cli {

// Adds the `data` command and its verbs; they report through `ctx` like the config verbs.
void AddDataCommands(CLI::App& app, CliContext& ctx);

}  // namespace dsv3::cli
