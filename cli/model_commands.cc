#include "model_commands.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "dsv3/procs/host.h"
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

void AddEval(CLI::App& app, CliContext& ctx) {
  struct State {
    std::string source, config, text;
    int threads = 0;
    OutputFormat format = OutputFormat::kText;
  };
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
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
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
