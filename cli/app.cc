#include "app.h"

#include <exception>
#include <memory>

#include <CLI/CLI.hpp>

#include "cli_docs.h"
#include "config_commands.h"
#include "dsv3/common/build_info.h"
#include "data_commands.h"
#include "export_command.h"
#include "model_commands.h"
#include "job_commands.h"
#include "output.h"
#include "slurm_commands.h"

namespace dsv3::cli {

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{"dsv3ctl: train DeepSeek-V3-style models and manage training jobs", "dsv3ctl"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show the help of every command");
  app.set_version_flag("--version", VersionLine("dsv3ctl"), "Print the version, the commit and the build's options");
  // Generated from this tree at build time: the man page (hidden --man) and completion.
  app.add_flag_callback("--man", [&app, &out] {
       out << ManPage(app, GetBuildInfo().version,
                      "0 success; 1 an invalid config, a failed request or a failed job (submit --follow, status "
                      "--watch JOB); 2 a bad command line; 3 the controller cannot be reached.");
       throw CLI::Success();
     })
      ->group("");
  CliContext ctx{out, err};
  AddConfigCommands(app, ctx);
  AddDataCommands(app, ctx);
  AddExportCommand(app, ctx);
  AddModelCommands(app, ctx);
  AddJobCommands(app, ctx);
  AddSlurmCommands(app, ctx);
  CLI::App* completion = app.add_subcommand("completion", "Print a shell completion script (bash or zsh)");
  auto shell = std::make_shared<std::string>();
  completion->add_option("SHELL", *shell, "bash or zsh")->required()->check(CLI::IsMember({"bash", "zsh"}));
  completion->callback([&app, &ctx, shell] {
    ctx.out << (*shell == "bash" ? BashCompletion(app) : ZshCompletion(app));
    ctx.exit_code = kExitOk;
  });

  // CLI11 parses argv-style input; keep the strings alive while it reads them.
  std::vector<std::string> storage;
  storage.reserve(args.size() + 1);
  storage.push_back("dsv3ctl");
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : storage) argv.push_back(s.data());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::CallForHelp& e) {
    out << app.help();
    return kExitOk;
  } catch (const CLI::CallForAllHelp& e) {
    out << app.help("", CLI::AppFormatMode::All);
    return kExitOk;
  } catch (const CLI::CallForVersion& e) {
    out << e.what() << "\n";
    return kExitOk;
  } catch (const CLI::Success&) {  // --man, written by its callback
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    // The help of the (sub)command that failed, after the reason.
    err << "dsv3ctl: " << e.what() << "\n";
    err << "Run with --help for usage.\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    err << "dsv3ctl: " << e.what() << "\n";
    return kExitFailed;
  }
  return ctx.exit_code;
}

}  // namespace dsv3::cli
