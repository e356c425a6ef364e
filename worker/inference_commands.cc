#include "inference_commands.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dsv3/common/config_io.h"
#include "dsv3/common/exit_codes.h"
#include "dsv3/ckpt/manifest.h"
#include "dsv3/train/inference.h"
#include "dsv3/train/trainer.h"

namespace dsv3::worker {
namespace {

using nlohmann::json;

constexpr const char* kGenerateUsage =
    "usage: dsv3-worker generate CHECKPOINT|HF_DIR [--config FILE] (--prompt TEXT ... | --prompts-file FILE)\n"
    "         [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S] [--stop TEXT ...]\n"
    "         [--ignore-eos] [--output text|json] [--threads N]\n";
constexpr const char* kEvalUsage =
    "usage: dsv3-worker eval CHECKPOINT|HF_DIR [--config FILE] [--text FILE] [--output text|json] [--threads N]\n";

int Usage(const char* verb, const char* usage, const std::string& problem) {
  std::cerr << "dsv3-worker " << verb << ": " << problem << "\n" << usage;
  return exit_status::kUsage;
}

// A number in [min, max] from `text`, or false.
bool Number(const char* text, double min, double max, double& out) {
  if (text == nullptr) return false;
  char* end = nullptr;
  out = std::strtod(text, &end);
  return end != text && *end == '\0' && out >= min && out <= max;
}

// What every verb takes: SOURCE, --config, --output, --threads (and --help).
struct VerbArgs {
  std::string source, config, output = "text";
  int threads = 0;
};

// A verb's own flags: "" when it took `flag` (reading its value through `value`, which gives
// nullptr at the end of the line), a problem to report, or kNotMine.
constexpr const char* kNotMine = "\x01";
using OwnFlags = std::function<std::string(const std::string& flag, const std::function<const char*()>& value)>;

// The exit status when the command ends here (help, or a usage error), or -1.
int ParseVerb(int argc, char** argv, const char* verb, const char* about, const char* usage, VerbArgs& a,
              const OwnFlags& own) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const std::function<const char*()> value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    double x = 0;
    if (arg == "--help" || arg == "-h") {
      std::cout << "dsv3-worker " << verb << ": " << about << "\n" << usage;
      return exit_status::kOk;
    } else if (arg == "--config") {
      if (!(v = value())) return Usage(verb, usage, "--config needs a file");
      a.config = v;
    } else if (arg == "--output") {
      if (!(v = value()) || (std::string(v) != "text" && std::string(v) != "json")) {
        return Usage(verb, usage, "--output needs text or json");
      }
      a.output = v;
    } else if (arg == "--threads") {
      if (!Number(value(), 1, 4096, x)) return Usage(verb, usage, "--threads needs a number >= 1");
      a.threads = static_cast<int>(x);
    } else if (!arg.empty() && arg[0] == '-') {
      const std::string problem = own(arg, value);
      if (problem == kNotMine) return Usage(verb, usage, "unknown argument " + arg);
      if (!problem.empty()) return Usage(verb, usage, problem);
    } else if (a.source.empty()) {
      a.source = arg;
    } else {
      return Usage(verb, usage, "one CHECKPOINT or HF_DIR only (got " + a.source + " and " + arg + ")");
    }
  }
  if (a.source.empty()) return Usage(verb, usage, "CHECKPOINT or HF_DIR is required");
  torch::set_num_threads(a.threads > 0 ? a.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return -1;
}

// generate's own flags into `prompts` and `request`.
OwnFlags GenerateFlags(std::vector<std::string>& prompts, train::GenerationRequest& request) {
  return [&prompts, &request](const std::string& flag, const std::function<const char*()>& value) -> std::string {
    const char* v = nullptr;
    double x = 0;
    if (flag == "--prompt") {
      if (!(v = value())) return "--prompt needs a text";
      prompts.push_back(v);
    } else if (flag == "--prompts-file") {
      if (!(v = value())) return "--prompts-file needs a file (one prompt per line)";
      std::ifstream in(v);
      if (!in) return std::string("--prompts-file ") + v + " cannot be opened";
      for (std::string line; std::getline(in, line);) {
        if (!line.empty()) prompts.push_back(line);
      }
    } else if (flag == "--max-tokens") {
      if (!Number(value(), 1, 1e9, x)) return "--max-tokens needs a number >= 1";
      request.max_tokens = static_cast<int64_t>(x);
    } else if (flag == "--temperature") {
      if (!Number(value(), 0, 100, x)) return "--temperature needs a number in [0, 100] (0: greedy)";
      request.sampling.temperature = x;
    } else if (flag == "--top-p") {
      if (!Number(value(), 1e-9, 1, x)) return "--top-p needs a number in (0, 1]";
      request.sampling.top_p = x;
    } else if (flag == "--top-k") {
      if (!Number(value(), 0, 1e9, x)) return "--top-k needs a number >= 0 (0: all tokens)";
      request.sampling.top_k = static_cast<int64_t>(x);
    } else if (flag == "--seed") {
      if (!Number(value(), 0, 1.8e19, x)) return "--seed needs a number >= 0";
      request.sampling.seed = static_cast<uint64_t>(x);
    } else if (flag == "--stop") {
      if (!(v = value()) || *v == '\0') return "--stop needs a non-empty text";
      request.stop.push_back(v);
    } else if (flag == "--ignore-eos") {
      request.stop_at_eos = false;
    } else {
      return kNotMine;
    }
    return "";
  };
}

// The config given with --config, or an exit status.
int LoadGivenConfig(const std::string& path, config::LoadResult& out) {
  if (path.empty()) return -1;
  out = config::LoadConfigFile(path);
  if (out.ok()) return -1;
  for (const auto& e : out.errors) std::cerr << path << ": " << e.ToString() << "\n";
  return exit_status::kConfigRefused;
}

json ToJson(const train::Generation& g) {
  return {{"prompt", g.prompt},
          {"text", g.text},
          {"prompt_ids", g.prompt_ids},
          {"ids", g.ids},
          {"logprobs", g.logprobs},
          {"finish_reason", g.finish_reason},
          {"tokens", g.ids.size()},
          {"seconds", g.seconds},
          {"prompt_seconds", g.prompt_seconds},
          {"tokens_per_s", g.tokens_per_second()}};
}

}  // namespace

int RunGenerate(int argc, char** argv) {
  VerbArgs a;
  std::vector<std::string> prompts;
  train::GenerationRequest request;
  if (const int status = ParseVerb(argc, argv, "generate",
                                   "sample from a dsv3 checkpoint or a HF DeepSeek directory through the compressed "
                                   "MLA cache",
                                   kGenerateUsage, a, GenerateFlags(prompts, request));
      status >= 0) {
    return status;
  }
  if (prompts.empty()) return Usage("generate", kGenerateUsage, "--prompt or --prompts-file is required");
  config::LoadResult cfg;
  if (const int status = LoadGivenConfig(a.config, cfg); status >= 0) return status;
  const torch::Device device = torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  train::InferenceModel model;
  try {
    model = train::LoadInferenceModel(a.source, a.config.empty() ? nullptr : &cfg.config, device);
  } catch (const std::exception& e) {
    std::cerr << "dsv3-worker generate: " << e.what() << "\n";
    return exit_status::kCheckpointUnreadable;
  }
  const bool json_out = a.output == "json", tty = isatty(STDOUT_FILENO) == 1;
  json generations = json::array();
  for (const std::string& prompt : prompts) {
    request.prompt = prompt;
    train::Generation g;
    try {
      if (!json_out && tty) {
        std::cout << "\033[1m" << prompt << "\033[0m" << std::flush;  // the prompt in bold, then the tokens as they come
        g = train::Generate(model, request, [](const std::string& piece) { std::cout << piece << std::flush; });
        std::cout << "\n";
      } else {
        g = train::Generate(model, request);
        if (!json_out) std::cout << g.text << "\n";
      }
    } catch (const std::exception& e) {
      std::cerr << "dsv3-worker generate: " << e.what() << "\n";
      return exit_status::kFailed;
    }
    if (json_out) generations.push_back(ToJson(g));
    char line[200];
    std::snprintf(line, sizeof(line), "[%zu tokens, %.1f tokens/s, first after %.3f s, %s]", g.ids.size(),
                  g.tokens_per_second(), g.prompt_seconds, g.finish_reason.c_str());
    std::cerr << line << "\n";
  }
  if (json_out) {
    std::cout << json{{"source", model.source}, {"step", model.step}, {"device", device.str()},
                      {"generations", generations}}
                     .dump(2)
              << "\n";
  }
  return exit_status::kOk;
}

namespace {

std::string ReadFile(const std::string& path, bool& ok) {
  std::ifstream in(path, std::ios::binary);
  ok = static_cast<bool>(in);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool IsHfDirectory(const std::string& path) {
  std::ifstream config(path + "/config.json"), manifest(path + "/manifest.json");
  return config && !manifest;
}

}  // namespace

int RunEval(int argc, char** argv) {
  VerbArgs a;
  std::string text_path;
  const OwnFlags own = [&text_path](const std::string& flag, const std::function<const char*()>& value) -> std::string {
    if (flag != "--text") return kNotMine;
    const char* v = value();
    if (v == nullptr) return "--text needs a file";
    text_path = v;
    return "";
  };
  if (const int status = ParseVerb(argc, argv, "eval",
                                   "the validation of a config's data (loss, perplexity, per source) on a checkpoint "
                                   "or a HF directory, or the log-likelihood of a text",
                                   kEvalUsage, a, own);
      status >= 0) {
    return status;
  }
  config::LoadResult cfg;
  if (const int status = LoadGivenConfig(a.config, cfg); status >= 0) return status;
  const std::string &source = a.source, &config_path = a.config, &output = a.output;
  const int threads = a.threads;
  const bool hf = IsHfDirectory(source), json_out = output == "json";
  if (!text_path.empty()) {
    bool ok = false;
    const std::string text = ReadFile(text_path, ok);
    if (!ok) return Usage("eval", kEvalUsage, "--text " + text_path + " cannot be read");
    train::TextScore score;
    std::string loaded_from;
    try {
      const torch::Device device =
          torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
      train::InferenceModel model = train::LoadInferenceModel(source, config_path.empty() ? nullptr : &cfg.config, device);
      loaded_from = model.source;
      score = train::ScoreText(model, text);
    } catch (const std::exception& e) {
      std::cerr << "dsv3-worker eval: " << e.what() << "\n";
      return exit_status::kCheckpointUnreadable;
    }
    const double ppl = std::exp(-score.mean());
    if (json_out) {
      std::cout << json{{"source", loaded_from}, {"text_file", text_path}, {"tokens", score.ids.size()},
                        {"scored_tokens", score.logprobs.size()}, {"total_logprob", score.total},
                        {"mean_logprob", score.mean()}, {"perplexity", ppl}, {"ids", score.ids},
                        {"logprobs", score.logprobs}}
                       .dump(2)
                << "\n";
    } else {
      char line[300];
      std::snprintf(line, sizeof(line), "%s: %zu tokens, log-likelihood %.4f (%.4f per token), perplexity %.3f\n",
                    text_path.c_str(), score.logprobs.size(), score.total, score.mean(), ppl);
      std::cout << line;
    }
    return exit_status::kOk;
  }
  // The config's validation: the checkpoint's own config unless one is given.
  config::Config use;
  if (!config_path.empty()) {
    use = cfg.config;
  } else if (hf) {
    return Usage("eval", kEvalUsage,
                 source + " is a HF directory: --config gives the data, tokenizer and model to evaluate it with");
  } else {
    try {
      const config::LoadResult r =
          config::LoadConfigText(ckpt::VerifyCheckpoint(source).at("config").dump());
      if (!r.ok()) throw std::runtime_error("its config does not load: " + r.errors[0].ToString());
      use = r.config;
    } catch (const std::exception& e) {
      std::cerr << "dsv3-worker eval: " << source << ": " << e.what() << "\n";
      return exit_status::kCheckpointUnreadable;
    }
  }
  train::EvalResult r;
  try {
    r = train::EvaluateWeights(use, source, hf, threads);
  } catch (const PermanentError& e) {
    std::cerr << "dsv3-worker eval: " << e.what() << "\n";
    return e.status();
  } catch (const std::exception& e) {
    std::cerr << "dsv3-worker eval: " << e.what() << "\n";
    return exit_status::kFailed;
  }
  if (json_out) {
    json per_source = json::object();
    for (const auto& [name, loss] : r.per_source_loss) per_source[name] = loss;
    std::cout << json{{"source", source}, {"step", r.step}, {"loss", r.loss}, {"perplexity", r.perplexity},
                      {"tokens", r.tokens}, {"per_source_loss", per_source}, {"sample_prompt", r.sample_prompt},
                      {"sample", r.sample}}
                     .dump(2)
              << "\n";
  } else {
    char line[300];
    std::snprintf(line, sizeof(line), "%s (step %lld): validation loss %.4f, perplexity %.3f over %lld tokens\n",
                  source.c_str(), static_cast<long long>(r.step), r.loss, r.perplexity,
                  static_cast<long long>(r.tokens));
    std::cout << line;
    for (const auto& [name, loss] : r.per_source_loss) {
      std::snprintf(line, sizeof(line), "  %-32s %.4f\n", name.c_str(), loss);
      std::cout << line;
    }
  }
  return exit_status::kOk;
}

}  // namespace dsv3::worker
