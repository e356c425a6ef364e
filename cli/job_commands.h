// The job verbs: `dsv3ctl submit | status | list | logs | cancel | metrics | checkpoints |
// checkpoint-now`. They talk to dsv3d over gRPC (dsv3.v1.Controller); the controller's
// address comes from --controller, else DSV3_CONTROLLER, else localhost:50051.
// Exit codes: 0 ok, 1 failed request or failed job, 2 usage, 3 controller unreachable.
#pragma once

#include <CLI/CLI.hpp>

#include "config_commands.h"

namespace dsv3::cli {

void AddJobCommands(CLI::App& app, CliContext& ctx);

}  // namespace dsv3::cli
