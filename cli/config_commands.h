// `dsv3ctl config validate|show|estimate|import-hf`: config tools that run locally.
#pragma once

#include <ostream>

#include <CLI/CLI.hpp>

namespace dsv3::cli {

struct CliContext {
  std::ostream& out;
  std::ostream& err;
  int exit_code = 0;  // set by the verb that ran
};

// Adds the `config` command and its verbs to `app`. The verbs run from CLI11 callbacks and
// record their exit code in `ctx`, which must outlive the parse.
void AddConfigCommands(CLI::App& app, CliContext& ctx);

}  // namespace dsv3::cli
