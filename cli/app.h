// dsv3ctl as a function: main() and the CLI tests both call RunCli.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace dsv3::cli {

// Runs dsv3ctl with `args` (without the program name), writing to out/err. Returns the exit
// code (output.h). Never throws; never calls exit().
int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace dsv3::cli
