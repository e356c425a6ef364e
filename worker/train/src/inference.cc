#include "dsv3/train/inference.h"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <stdexcept>

#include "dsv3/ckpt/checkpoint.h"
#include "dsv3/ckpt/hf_checkpoint.h"
#include "dsv3/common/config_io.h"
#include "dsv3/model/hf_state_dict.h"
#include "dsv3/train/hf_weights.h"
#include "dsv3/train/trainer.h"

namespace dsv3::train {

namespace fs = std::filesystem;

namespace {

// A HF directory holds config.json and no dsv3 manifest.
bool IsHfDirectory(const std::string& path) {
  return fs::is_directory(path) && fs::exists(fs::path(path) / "config.json") &&
         !fs::exists(fs::path(path) / "manifest.json");
}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// How much of `text`'s end could still grow into one of `stops`.
size_t HeldBack(const std::string& text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& stop : stops) {
    for (size_t n = std::min(stop.size() - 1, text.size()); n > held; --n) {
      if (text.compare(text.size() - n, n, stop, 0, n) == 0) {
        held = n;
        break;
      }
    }
  }
  return held;
}

}  // namespace

InferenceModel LoadInferenceModel(const std::string& path, const config::Config* config, torch::Device device) {
  InferenceModel m;
  m.source = path;
  if (IsHfDirectory(path)) {
    if (config == nullptr) {
      throw std::runtime_error(path + " is a HF directory: give a config with its tokenizer (data.tokenizer) and a "
                                      "matching model section (dsv3ctl config import-hf " + path + "/config.json)");
    }
    m.cfg = *config;
    m.model = model::DeepSeekV3(m.cfg);
    ckpt::HfCheckpoint hf(path);
    LoadHfWeights(m.cfg, {}, *m.model, hf);
  } else {
    ckpt::LoadedCheckpoint c = ckpt::LoadCheckpoint(path);
    const config::LoadResult r = config::LoadConfigText(c.manifest.at("config").dump());
    if (!r.ok()) throw std::runtime_error(c.path + "/manifest.json: its config does not load: " + r.errors[0].ToString());
    m.cfg = r.config;
    if (config != nullptr) m.cfg.data.tokenizer = config->data.tokenizer;
    m.model = model::DeepSeekV3(m.cfg);
    model::LoadHfStateDict(*m.model, c.model);
    m.source = c.path;
    m.step = c.step;
  }
  m.model->to(device);
  m.model->eval();
  m.tokenizer = data::MakeTokenizer(m.cfg.data.tokenizer, m.cfg.model.vocab_size);
  return m;
}

EvalResult EvaluateWeights(config::Config cfg, const std::string& source, bool hf, int threads) {
  char scratch_template[] = "/tmp/dsv3-eval-XXXXXX";
  if (mkdtemp(scratch_template) == nullptr) throw std::runtime_error("cannot create a temporary directory in /tmp");
  const std::string scratch = scratch_template;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{scratch};
  // One process: no parallel split; the run's outputs go to the scratch folder.
  nlohmann::json j = config::ToJson(cfg);
  auto& d = j["distributed"];
  for (const char* size : {"data_parallel_size", "tensor_parallel_size", "pipeline_parallel_size",
                           "expert_parallel_size"}) {
    if (d.contains(size)) d[size] = 1;
  }
  j["output_dir"] = scratch;
  j["checkpointing"]["dir"] = scratch + "/checkpoints";
  j["checkpointing"]["resume_from"] = nullptr;
  j["checkpointing"]["init_from_hf"] = hf ? nlohmann::json(source) : nlohmann::json();
  j["logging"]["tensorboard"]["enabled"] = false;
  j["logging"]["wandb"]["enabled"] = false;
  j["logging"]["peak_tflops"] = 1.0;  // no start-up measurement: evaluation reports no MFU
  j["validation"]["enabled"] = true;
  j["slurm"]["enabled"] = false;
  config::LoadOptions options;
  options.world_size = 1;
  const config::LoadResult loaded = config::LoadConfigText(j.dump(), options);
  if (!loaded.ok()) throw std::runtime_error("the config for evaluation: " + loaded.errors[0].ToString());
  TrainerOptions opt;
  if (!hf) opt.resume = source;
  opt.threads = threads;
  Trainer trainer(loaded.config, opt, {});
  return trainer.Evaluate();
}

TextScore ScoreText(InferenceModel& m, const std::string& text) {
  TextScore out;
  const std::vector<int32_t> ids = m.tokenizer->Encode(text);
  out.ids.assign(ids.begin(), ids.end());
  const int64_t window = m.cfg.model.mla.max_context_length, n = static_cast<int64_t>(out.ids.size());
  const torch::Device device = m.model->embed_tokens->weight.device();
  torch::NoGradGuard no_grad;
  // Windows overlap by one token, so that every token after the first is scored once.
  for (int64_t begin = 0; begin + 1 < n; begin += window - 1) {
    const int64_t len = std::min(window, n - begin);
    if (len < 2) break;
    const torch::Tensor tokens =
        torch::tensor(std::vector<int64_t>(out.ids.begin() + begin, out.ids.begin() + begin + len)).view({1, len});
    const torch::Tensor logp =
        torch::log_softmax(m.model->Logits(tokens.to(device)).to(torch::kCPU).to(torch::kDouble)[0], -1);
    for (int64_t i = 1; i < len; ++i) {
      out.logprobs.push_back(logp[i - 1][out.ids[static_cast<size_t>(begin + i)]].item<double>());
      out.total += out.logprobs.back();
    }
  }
  return out;
}

Generation Generate(InferenceModel& m, const GenerationRequest& request,
                    const std::function<void(const std::string&)>& stream) {
  Generation g;
  g.prompt = request.prompt;
  const std::vector<int32_t> prompt = m.tokenizer->Encode(request.prompt);
  if (prompt.empty()) throw std::runtime_error("the prompt \"" + request.prompt + "\" encodes to no tokens");
  g.prompt_ids.assign(prompt.begin(), prompt.end());
  const int64_t eos = m.tokenizer->eos_id();
  model::SamplingOptions sampling = request.sampling;
  sampling.eos_token.reset();
  size_t shown = 0;  // characters of the text already streamed
  std::vector<int32_t> text_ids;
  const auto t0 = std::chrono::steady_clock::now();
  sampling.on_token = [&](int64_t token, double logprob) {
    if (g.ids.empty()) g.prompt_seconds = Since(t0);
    g.ids.push_back(token);
    g.logprobs.push_back(logprob);
    if (request.stop_at_eos && token == eos) {
      g.finish_reason = "eos";
      return false;
    }
    text_ids.push_back(static_cast<int32_t>(token));
    g.text = m.tokenizer->Decode(text_ids);
    size_t end = g.text.size();
    for (const std::string& stop : request.stop) {
      const size_t at = g.text.find(stop);
      if (!stop.empty() && at != std::string::npos && at < end) {
        end = at;
        g.finish_reason = "stop";
      }
    }
    g.text.resize(end);
    const size_t safe = g.finish_reason == "stop" ? end : end - HeldBack(g.text, request.stop);
    if (stream && safe > shown) stream(g.text.substr(shown, safe - shown));
    shown = std::max(shown, safe);
    return g.finish_reason.empty();
  };
  m.model->Generate(g.prompt_ids, request.max_tokens, sampling);
  if (g.finish_reason.empty()) {
    g.finish_reason = static_cast<int64_t>(g.ids.size()) >= request.max_tokens ? "length" : "context";
  }
  if (stream && g.text.size() > shown) stream(g.text.substr(shown));
  g.seconds = Since(t0);
  return g;
}

}  // namespace dsv3::train
