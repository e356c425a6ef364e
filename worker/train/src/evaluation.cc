// Validation: the loss over the held-out windows (dealt over the data-parallel ranks and
// summed over the data-parallel group), per source, perplexity, and a greedy sample of the configured prompt.
#include <algorithm>
#include <cmath>

#include "trainer_state.h"

namespace dsv3::train {

EvalResult Trainer::State::Evaluate() {
  EvalResult result;
  result.step = step;
  if (!data.validation || data.validation->windows().rows == 0) return result;
  compute->eval();
  torch::NoGradGuard no_grad;
  const data::Batch& w = data.validation->windows();
  const auto& names = data.validation->source_names();
  std::vector<double> sum(names.size(), 0.0);
  std::vector<int64_t> count(names.size(), 0);
  const int64_t chunk = cfg.validation.micro_batch_size, T = w.width - 1;
  // The chunks are dealt round-robin over the data-parallel ranks and the sums all-reduced.
  // Every rank runs the same number of forwards, because a forward can hold collectives
  // (expert all-to-alls, ZeRO-3 gathers) that must pair up: a rank with no chunk left
  // repeats the last one and discards the result.
  const int64_t chunks = (w.rows + chunk - 1) / chunk, rounds = (chunks + dp - 1) / dp;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t c = round * dp + groups.coord.dp;
    const bool counted = c < chunks;
    const int64_t r0 = std::min(c, chunks - 1) * chunk, n = std::min(chunk, w.rows - r0);
    const torch::Tensor tokens = Rows(w.tokens, r0, n, w.width, device);
    const torch::Tensor logits =
        groups.grid.pp > 1 ? PipelineLogits(tokens.narrow(1, 0, T)) : compute->Logits(tokens.narrow(1, 0, T));
    if (!counted || !logits.defined()) continue;  // padding, or not the last stage
    const torch::Tensor losses =
        torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat),
                                             tokens.narrow(1, 1, T).reshape({-1}),
                                             torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone))
            .view({n, T})
            .sum(1)
            .to(torch::kCPU)
            .to(torch::kDouble);
    for (int64_t i = 0; i < n; ++i) {
      const size_t s = static_cast<size_t>(w.sources[static_cast<size_t>(r0 + i)]);
      sum[s] += losses[i].item<double>();
      count[s] += T;
    }
  }
  if (world->size() > 1) {
    // Only the last stage scored; each tensor-parallel rank of a replica the same chunks.
    const auto S = static_cast<int64_t>(names.size());
    torch::Tensor both = torch::zeros({2 * S}, torch::kDouble);
    for (int64_t s = 0; s < S; ++s) {
      both[s] = sum[static_cast<size_t>(s)];
      both[S + s] = static_cast<double>(count[static_cast<size_t>(s)]);
    }
    both = both.to(device);
    world->AllReduce(both)->Wait();
    both = both.to(torch::kCPU) / static_cast<double>(tp);
    for (int64_t s = 0; s < S; ++s) {
      sum[static_cast<size_t>(s)] = both[s].item<double>();
      count[static_cast<size_t>(s)] = static_cast<int64_t>(both[S + s].item<double>());
    }
  }
  double total = 0;
  int64_t tokens = 0;
  for (size_t s = 0; s < names.size(); ++s) {
    if (count[s] == 0) continue;
    result.per_source_loss.push_back({names[s], sum[s] / static_cast<double>(count[s])});
    total += sum[s];
    tokens += count[s];
  }
  result.tokens = tokens;
  result.loss = tokens > 0 ? total / static_cast<double>(tokens) : 0;
  result.perplexity = std::exp(result.loss);
  result.sample_prompt = cfg.validation.sample_prompt;
  if (cfg.validation.sample_tokens > 0 && !cfg.validation.sample_prompt.empty() && groups.grid.pp > 1) {
    if (eval_step < 0) Message("validation.sample_tokens: no greedy sample under pipeline parallelism (not built yet)");
  } else if (cfg.validation.sample_tokens > 0 && !cfg.validation.sample_prompt.empty()) {
    std::vector<int32_t> prompt32 = data.tokenizer->Encode(cfg.validation.sample_prompt);
    model::SamplingOptions greedy;
    greedy.eos_token = data.tokenizer->eos_id();
    const std::vector<int64_t> out = compute->Generate(std::vector<int64_t>(prompt32.begin(), prompt32.end()),
                                                       cfg.validation.sample_tokens, greedy);
    result.sample = data.tokenizer->Decode(std::vector<int32_t>(out.begin(), out.end()));
  }
  compute->train();
  eval_step = step;
  eval_loss_at_step = result.loss;
  for (auto& r : reporters) r->OnEval(result);
  return result;
}

torch::Tensor Trainer::State::PipelineLogits(const torch::Tensor& tokens_BT) {
  const int p = static_cast<int>(groups.grid.pp), s = static_cast<int>(groups.coord.pp);
  const int64_t chunks = static_cast<int64_t>(compute->pipeline_stage().chunks.size());
  torch::Tensor out;
  for (int64_t c = 0; c < chunks; ++c) {  // through this stage's model chunks, in order
    torch::Tensor h_in;
    if (!(s == 0 && c == 0)) {
      h_in = torch::empty({tokens_BT.size(0), tokens_BT.size(1), cfg.model.mla.d_model},
                          torch::TensorOptions().dtype(compute_dtype).device(device));
      groups.pp->Recv(h_in, (s + p - 1) % p)->Wait();
    }
    out = compute->LogitsStage(tokens_BT, h_in, c);
    if (s == p - 1 && c == chunks - 1) return out;  // the logits
    groups.pp->Send(out.contiguous(), (s + 1) % p)->Wait();
  }
  return torch::Tensor();
}

}  // namespace dsv3::train
