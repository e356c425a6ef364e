// Using a trained model outside training: load a dsv3 checkpoint or a HuggingFace directory
// with its tokenizer, and sample from it through the compressed MLA cache (dsv3-worker
// generate, behind `dsv3ctl generate`). One process, one device, batch 1.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "dsv3/common/config.h"
#include "dsv3/data/tokenizer.h"
#include "dsv3/model/model.h"
#include "dsv3/train/reporter.h"

namespace dsv3::train {

struct InferenceModel {
  config::Config cfg;
  model::DeepSeekV3 model{nullptr};
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::string source;  // the checkpoint or HF directory loaded
  int64_t step = -1;   // the checkpoint's step (-1 for a HF directory)
};

// `path` is a dsv3 checkpoint (a checkpoint_<step> directory, its manifest.json, or
// checkpoint_<step>.pt), verified, whose manifest's config builds the model; or a HF
// DeepSeek-V2/V3 directory (config.json + safetensors, FP8 included), which needs `config`
// (its data.tokenizer, and a model section that matches: dsv3ctl config import-hf). A
// `config` given with a checkpoint replaces the tokenizer section only. Throws
// std::runtime_error naming the file and the problem.
InferenceModel LoadInferenceModel(const std::string& path, const config::Config* config, torch::Device device);

struct GenerationRequest {
  std::string prompt;
  int64_t max_tokens = 64;
  model::SamplingOptions sampling;  // eos_token and on_token are set by Generate
  std::vector<std::string> stop;    // stop strings: the text ends before the first one
  bool stop_at_eos = true;
};

struct Generation {
  std::string prompt, text;
  std::vector<int64_t> prompt_ids, ids;  // ids: every generated token (the stop string's too)
  std::vector<double> logprobs;          // of each generated token under the model
  std::string finish_reason;             // eos | stop | length | context
  double prompt_seconds = 0, seconds = 0;  // prompt + every new token
  double tokens_per_second() const { return seconds > 0 ? static_cast<double>(ids.size()) / seconds : 0; }
};

// The validation of `cfg`'s data on the weights of `source` (a checkpoint, or a HF directory
// when `hf`), as the trainer's own evaluation computes it, on one process: the parallel sizes
// are set to 1, and the run's folders are a temporary directory (the config's checkpoint
// folder is never touched). Throws std::runtime_error (a config or data problem names it).
EvalResult EvaluateWeights(config::Config cfg, const std::string& source, bool hf, int threads);

struct TextScore {
  std::vector<int64_t> ids;        // the text's tokens
  std::vector<double> logprobs;    // of ids[1..] given what precedes them (the first has no context)
  double total = 0;                // sum of logprobs
  double mean() const { return logprobs.empty() ? 0 : total / static_cast<double>(logprobs.size()); }
};

// The log-likelihood of `text` under the model, in windows of the model's context length
// (each window restarts the context, overlapping the last by one token).
TextScore ScoreText(InferenceModel& m, const std::string& text);

// Samples a continuation of request.prompt; `stream` (optional) gets each new piece of text
// as it is decided (text held back while it could still become a stop string).
Generation Generate(InferenceModel& m, const GenerationRequest& request,
                    const std::function<void(const std::string&)>& stream = {});

}  // namespace dsv3::train
