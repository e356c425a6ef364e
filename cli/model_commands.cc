#include "model_commands.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "dsv3/ckpt/manifest.h"
#include "dsv3/common/config_io.h"
#include "dsv3/procs/host.h"
#include "job_rpc.h"
#include "job_views.h"
#include "output.h"

namespace dsv3::cli {

namespace {

// Runs `argv` with this process's terminal and waits; its exit status, or why it did not run.
int RunWorker(std::vector<std::string> argv, std::ostream& err) {
  const auto worker = procs::FindSiblingBinary("dsv3-worker");
  if (!worker) {
    err << "dsv3ctl " << argv[0] << ": dsv3-worker is not installed next to dsv3ctl (it runs the model)\n";
    return kExitFailed;
  }
  argv.insert(argv.begin(), *worker);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::cout.flush();
  const pid_t pid = fork();
  if (pid < 0) {
    err << "dsv3ctl " << argv[1] << ": cannot start " << argv[0] << ": " << std::strerror(errno) << "\n";
    return kExitFailed;
  }
  if (pid == 0) {
    execv(args[0], args.data());
    const std::string why = "dsv3ctl " + argv[1] + ": cannot run " + argv[0] + ": " + std::strerror(errno) + "\n";
    (void)!write(STDERR_FILENO, why.data(), why.size());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

void AddGenerate(CLI::App& app, CliContext& ctx) {
  struct State {
    std::string source, config, prompts_file;
    std::vector<std::string> prompts, stops;
    int64_t max_tokens = 64, top_k = 0;
    double temperature = 0, top_p = 1;
    uint64_t seed = 0;
    int threads = 0;
    bool ignore_eos = false;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand(
      "generate", "Sample from a checkpoint or a HF DeepSeek directory on this machine, through the compressed MLA "
                  "cache; streams tokens on a terminal and reports tokens/s");
  verb->add_option("SOURCE", st->source, "A checkpoint (checkpoint_<step> or .pt) or a HF directory")->required();
  verb->add_option("--config", st->config,
                   "Config whose data.tokenizer (and, for a HF directory, model section) to use");
  verb->add_option("--prompt", st->prompts, "A prompt (repeat for several)");
  verb->add_option("--prompts-file", st->prompts_file, "Prompts, one per line")->check(CLI::ExistingFile);
  verb->add_option("--max-tokens", st->max_tokens, "New tokens at most (default 64)")->check(CLI::PositiveNumber);
  verb->add_option("--temperature", st->temperature, "0 (default): greedy; above 0: sampled")
      ->check(CLI::Range(0.0, 100.0));
  verb->add_option("--top-p", st->top_p, "Nucleus: the smallest set of tokens with this much probability")
      ->check(CLI::Range(1e-9, 1.0));
  verb->add_option("--top-k", st->top_k, "Only the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber);
  verb->add_option("--seed", st->seed, "Seed of the sampling");
  verb->add_option("--stop", st->stops, "Stop before this text (repeat for several)");
  verb->add_flag("--ignore-eos", st->ignore_eos, "Keep going past the end-of-text token");
  verb->add_option("--threads", st->threads, "CPU threads (default: every core)")->check(CLI::PositiveNumber);
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    if (st->prompts.empty() && st->prompts_file.empty()) {
      ctx.err << "dsv3ctl generate: --prompt or --prompts-file is required\n";
      ctx.exit_code = kExitUsage;
      return;
    }
    std::vector<std::string> argv = {"generate", st->source};
    const auto add = [&](const char* flag, const std::string& value) {
      argv.push_back(flag);
      argv.push_back(value);
    };
    if (!st->config.empty()) add("--config", st->config);
    for (const auto& p : st->prompts) add("--prompt", p);
    if (!st->prompts_file.empty()) add("--prompts-file", st->prompts_file);
    for (const auto& s : st->stops) add("--stop", s);
    add("--max-tokens", std::to_string(st->max_tokens));
    add("--temperature", std::to_string(st->temperature));
    add("--top-p", std::to_string(st->top_p));
    add("--top-k", std::to_string(st->top_k));
    add("--seed", std::to_string(st->seed));
    if (st->threads > 0) add("--threads", std::to_string(st->threads));
    if (st->ignore_eos) argv.push_back("--ignore-eos");
    add("--output", st->format == OutputFormat::kJson ? "json" : "text");
    ctx.exit_code = RunWorker(argv, ctx.err);
  });
}

struct EvalState {
  std::string source, config, text;
  int threads = 0;
  bool submit = false;
  OutputFormat format = OutputFormat::kText;
  Common common;  // --submit: the controller
};

// The config an evaluation job runs: --config, or the checkpoint's own (from its manifest),
// made a training.skip_train run from SOURCE whose outputs stay in the job's folder. "" or
// why not.
std::string EvaluationConfig(const EvalState& st, nlohmann::json& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool hf = fs::exists(fs::path(st.source) / "config.json", ec) && !fs::exists(fs::path(st.source) / "manifest.json", ec);
  if (!st.config.empty()) {
    const config::LoadResult r = config::LoadConfigFile(st.config);
    if (!r.ok()) return st.config + ": " + r.errors[0].ToString();
    out = config::ToJson(r.config);
  } else if (hf) {
    return st.source + " is a HF directory: --config gives the data, tokenizer and model to evaluate it with";
  } else {
    try {
      const std::string dir = ckpt::ResolveCheckpointPath(st.source);
      std::ifstream in(fs::path(dir) / "manifest.json");
      std::stringstream text;
      text << in.rdbuf();
      if (!in) return "cannot read " + dir + "/manifest.json here: give --config";
      out = ckpt::ParseManifest(text.str(), dir + "/manifest.json").at("config");
    } catch (const std::exception& e) {
      return std::string(e.what()) + " (give --config when the checkpoint is not readable here)";
    }
  }
  const std::string source = fs::absolute(st.source, ec).lexically_normal().string();
  out["experiment_name"] = out.value("experiment_name", std::string("run")) + "_eval";
  out["output_dir"] = "./outputs/eval";
  out["training"]["skip_train"] = true;
  out["validation"]["enabled"] = true;
  out["logging"]["tensorboard"]["log_dir"] = "./outputs/eval/tensorboard";
  out["checkpointing"]["dir"] = nullptr;
  out["checkpointing"]["resume_from"] = hf ? nlohmann::json() : nlohmann::json(source);
  out["checkpointing"]["init_from_hf"] = hf ? nlohmann::json(source) : nlohmann::json();
  return "";
}

void PrintEvaluation(const std::string& source, int64_t job_id, const v1::Evaluation& e, OutputFormat format,
                     std::ostream& os) {
  if (format == OutputFormat::kJson) {
    nlohmann::json per_source = nlohmann::json::object();
    for (const auto& [name, loss] : e.per_source_loss()) per_source[name] = loss;
    os << nlohmann::json{{"source", source}, {"job_id", job_id}, {"step", e.step()}, {"loss", e.loss()},
                         {"perplexity", e.perplexity()}, {"tokens", e.tokens()}, {"per_source_loss", per_source},
                         {"sample", e.sample()}}
                 .dump(2)
       << "\n";
    return;
  }
  char line[300];
  std::snprintf(line, sizeof(line), "%s (step %lld, job %lld): validation loss %.4f, perplexity %.3f over %lld tokens\n",
                source.c_str(), static_cast<long long>(e.step()), static_cast<long long>(job_id), e.loss(),
                e.perplexity(), static_cast<long long>(e.tokens()));
  os << line;
  for (const auto& [name, loss] : e.per_source_loss()) {
    std::snprintf(line, sizeof(line), "  %-32s %.4f\n", name.c_str(), loss);
    os << line;
  }
}

// dsv3ctl eval --submit: the evaluation as a dsv3d job, waited for; its result from the job.
void SubmitEvaluation(EvalState& st, CliContext& ctx) {
  ctx.exit_code = kExitFailed;
  st.common.format = st.format;
  nlohmann::json cfg;
  if (const std::string why = EvaluationConfig(st, cfg); !why.empty()) {
    ctx.err << "dsv3ctl eval: " << why << "\n";
    return;
  }
  v1::SubmitJobRequest req;
  req.set_config_json(cfg.dump());
  req.set_name(cfg["experiment_name"].get<std::string>());
  std::error_code ec;
  req.set_working_dir(std::filesystem::current_path(ec).string());
  v1::SubmitJobResponse resp;
  if (!Call(st.common, ctx, &v1::Controller::Stub::SubmitJob, req, &resp)) return;
  const int64_t id = resp.job().id();
  if (st.format == OutputFormat::kText) ctx.err << "dsv3ctl eval: job " << id << " evaluates " << st.source << "\n";
  auto stub = st.common.Stub();
  std::optional<v1::Job> job;
  while ((job = FetchJob(*stub, id, st.common, ctx)) && !IsTerminal(job->state())) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  if (!job) return;
  if (job->state() != v1::JOB_STATE_COMPLETED || job->evaluations_size() == 0) {
    ctx.err << "dsv3ctl eval: job " << id << " ended " << StateName(job->state()) << ": " << job->state_reason()
            << " (dsv3ctl logs " << id << ")\n";
    return;
  }
  PrintEvaluation(st.source, id, job->evaluations(job->evaluations_size() - 1), st.format, ctx.out);
  ctx.exit_code = kExitOk;
}

void AddEval(CLI::App& app, CliContext& ctx) {
  using State = EvalState;
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand(
      "eval", "Evaluate a checkpoint or a HF DeepSeek directory on this machine: the config's validation data "
              "(loss, perplexity, per source; the checkpoint's own config by default), or a text's log-likelihood");
  verb->add_option("SOURCE", st->source, "A checkpoint (checkpoint_<step> or .pt) or a HF directory")->required();
  verb->add_option("--config", st->config, "Config with the data, validation and tokenizer to use (required for a HF "
                                           "directory; its model section must match)");
  verb->add_option("--text", st->text, "Score this file instead: total and per-token log-likelihood")
      ->check(CLI::ExistingFile);
  verb->add_option("--threads", st->threads, "CPU threads (default: every core)")->check(CLI::PositiveNumber);
  verb->add_flag("--submit", st->submit,
                 "Run it as a job under dsv3d (on its ranks and hosts, training.skip_train) and wait for the result");
  AddOutputOption(*verb, st->format);
  st->common.connection.Add(*verb);
  verb->callback([st, &ctx] {
    if (st->submit) {
      if (!st->text.empty()) {
        ctx.err << "dsv3ctl eval: --text scores here only (not with --submit)\n";
        ctx.exit_code = kExitUsage;
        return;
      }
      SubmitEvaluation(*st, ctx);
      return;
    }
    std::vector<std::string> argv = {"eval", st->source};
    if (!st->config.empty()) argv.insert(argv.end(), {"--config", st->config});
    if (!st->text.empty()) argv.insert(argv.end(), {"--text", st->text});
    if (st->threads > 0) argv.insert(argv.end(), {"--threads", std::to_string(st->threads)});
    argv.insert(argv.end(), {"--output", st->format == OutputFormat::kJson ? "json" : "text"});
    ctx.exit_code = RunWorker(argv, ctx.err);
  });
}

}  // namespace

void AddModelCommands(CLI::App& app, CliContext& ctx) {
  AddGenerate(app, ctx);
  AddEval(app, ctx);
}

}  // namespace dsv3::cli
