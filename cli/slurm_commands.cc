#include "slurm_commands.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/common/slurm_script.h"
#include "dsv3/procs/command.h"
#include "dsv3/procs/host.h"
#include "output.h"

namespace dsv3::cli {
namespace {

namespace fs = std::filesystem;

// dsv3-worker next to dsv3ctl (installed) or in the build tree's worker/ folder, else the
// one in PATH on the compute nodes.
std::string FindWorker(const std::string& given) {
  if (!given.empty()) return fs::absolute(given).lexically_normal().string();
  return procs::FindSiblingBinary("dsv3-worker").value_or("dsv3-worker");
}

struct ScriptArgs {
  std::string config, script_file, worker, resume;
  OutputFormat format = OutputFormat::kText;
};

// The standalone script for `args.config`, or "" after reporting why not.
std::string BuildScript(const ScriptArgs& args, CliContext& ctx) {
  const config::LoadResult loaded = config::LoadConfigFile(args.config);
  for (const auto& w : loaded.warnings) ctx.err << args.config << ": warning: " << w.ToString() << "\n";
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) ctx.err << args.config << ": " << e.ToString() << "\n";
    ctx.err << "dsv3ctl: " << args.config << " is invalid; no script written\n";
    ctx.exit_code = kExitFailed;
    return "";
  }
  const config::Config& c = loaded.config;
  config::SlurmScriptOptions o;
  o.worker = FindWorker(args.worker);
  o.worker_args = {"--config", fs::absolute(args.config).lexically_normal().string()};
  if (!args.resume.empty()) o.worker_args.insert(o.worker_args.end(), {"--resume", args.resume});
  if (c.training.intra_op_threads <= 0) {
    o.worker_args.insert(o.worker_args.end(), {"--threads", std::to_string(c.slurm.cpus_per_task)});
  }
  std::error_code ec;
  o.chdir = fs::current_path(ec).string();
  o.rank_output = "logs/" + c.slurm.job_name + "-%j-rank%t.log";
  o.header_comment = "Written by `dsv3ctl slurm script " + args.config + "`: " +
                     config::DescribeSlurmLayout(c.slurm) +
                     "\nStandalone: ranks log to " + o.rank_output +
                     "; on the time-limit signal they checkpoint, and resubmitting with\n"
                     "checkpointing.resume_from \"latest\" (or --resume latest) continues the run.";
  // Slurm opens the batch output files before the script runs: their folders must exist.
  for (const std::string& f : {c.slurm.output, c.slurm.error}) {
    const fs::path parent = (fs::path(o.chdir) / f).parent_path();
    fs::create_directories(parent, ec);
  }
  return config::RenderSlurmScript(c.slurm, o);
}

bool WriteScript(const std::string& path, const std::string& text, CliContext& ctx) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  if (!f) {
    ctx.err << "dsv3ctl: cannot write " << path << "\n";
    ctx.exit_code = kExitFailed;
    return false;
  }
  f.close();
  chmod(path.c_str(), 0755);
  return true;
}

void AddOptions(CLI::App& verb, ScriptArgs& a) {
  verb.add_option("CONFIG", a.config, "Training config (its slurm section sets the allocation)")->required();
  verb.add_option("--worker", a.worker, "dsv3-worker path on the compute nodes (default: next to dsv3ctl)");
  verb.add_option("--resume", a.resume, "Checkpoint the ranks start from (a path or 'latest')");
  AddOutputOption(verb, a.format);
}

}  // namespace

void AddSlurmCommands(CLI::App& app, CliContext& ctx) {
  CLI::App* slurm = app.add_subcommand("slurm", "Slurm without dsv3d: write or submit a standalone sbatch script");
  slurm->require_subcommand(1);

  // The script's file is --script-file (not -o/--output, which is the output format on
  // every verb).
  auto script_args = std::make_shared<ScriptArgs>();
  CLI::App* script =
      slurm->add_subcommand("script", "Write the sbatch script for a config (stdout, or --script-file FILE)");
  AddOptions(*script, *script_args);
  script->add_option("--script-file", script_args->script_file, "Write the script here instead of stdout");
  script->callback([script_args, &ctx] {
    const std::string text = BuildScript(*script_args, ctx);
    if (text.empty()) return;
    const std::string& file = script_args->script_file;
    if (!file.empty() && !WriteScript(file, text, ctx)) return;
    if (script_args->format == OutputFormat::kJson) {
      nlohmann::json j = {{"script", text}};
      if (!file.empty()) j["script_file"] = file;
      ctx.out << j.dump(2) << "\n";
    } else if (file.empty()) {
      ctx.out << text;
    } else {
      ctx.out << "wrote " << file << "; submit it with: sbatch " << file << "\n";
    }
    ctx.exit_code = kExitOk;
  });

  auto submit_args = std::make_shared<ScriptArgs>();
  CLI::App* submit = slurm->add_subcommand("submit", "Write the sbatch script and submit it with sbatch");
  AddOptions(*submit, *submit_args);
  submit->add_option("--script-file", submit_args->script_file, "Where the script is written")
      ->capture_default_str();
  submit_args->script_file = "slurm_job.sh";
  submit->callback([submit_args, &ctx] {
    const std::string& file = submit_args->script_file;
    const std::string text = BuildScript(*submit_args, ctx);
    if (text.empty() || !WriteScript(file, text, ctx)) return;
    const procs::CommandResult r = procs::RunCommand({"sbatch", "--parsable", file}, std::chrono::seconds(60));
    if (!r.ok()) {
      ctx.err << "dsv3ctl: " << r.Describe("sbatch") << "\n";
      ctx.exit_code = kExitFailed;
      return;
    }
    const std::string id = r.out.substr(0, r.out.find_first_of(";\n"));
    if (submit_args->format == OutputFormat::kJson) {
      ctx.out << nlohmann::json{{"slurm_job_id", id}, {"script_file", file}}.dump(2) << "\n";
    } else {
      ctx.out << "submitted Slurm job " << id << " (" << file << ")\n"
              << "  squeue -j " << id << "    scancel " << id << "\n";
    }
    ctx.exit_code = kExitOk;
  });
}

}  // namespace dsv3::cli
