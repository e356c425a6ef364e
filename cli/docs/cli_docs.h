// Man pages and shell completion generated from a program's CLI11 tree, so that they never
// drift from the flags: `<program> --man` prints a man page (section 1, every subcommand with
// its options), `dsv3ctl completion bash|zsh` prints a completion script. The build runs
// these to produce the installed man pages and completion files (cli/CMakeLists.txt).
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace dsv3::cli {

// troff for man(1): NAME, SYNOPSIS, DESCRIPTION, OPTIONS, one COMMANDS subsection per
// (nested) subcommand, EXIT STATUS when `exit_status` is given, SEE ALSO.
std::string ManPage(const CLI::App& app, const std::string& version, const std::string& exit_status = "");

// Completion of subcommands and long options (files elsewhere) for bash and zsh.
std::string BashCompletion(const CLI::App& app);
std::string ZshCompletion(const CLI::App& app);

}  // namespace dsv3::cli
