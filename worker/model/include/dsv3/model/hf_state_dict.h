// Checkpoint name mapping between our modules and HF's DeepseekV3ForCausalLM, kept apart
// from the model code (torchtitan's state_dict_adapter). HF layout:
//   model.embed_tokens.weight, model.layers.<i>.<module>..., model.norm.weight, lm_head.weight
//   routed experts one by one:   model.layers.<i>.mlp.experts.<e>.{gate,up,down}_proj.weight
//   MTP depth k as layer L+k-1:  enorm, hnorm, eh_proj, the block's modules,
//                                shared_head.norm, and copies of embed_tokens and the head
//                                (shared_head.head)
// RoPE pairs are interleaved in both (see layers.h), so no weight is permuted.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "dsv3/model/model.h"

namespace dsv3::model {

// Every tensor HF expects, by HF name, in model order. Expert tensors are views into the
// stacked parameters; copies of shared tensors (MTP embed/head) alias the originals.
// `replace`: our parameter names -> tensors to export instead (the full expert stacks
// gathered from an expert-parallel group).
std::vector<std::pair<std::string, torch::Tensor>> ToHfStateDict(
    DeepSeekV3Impl& model, const std::map<std::string, torch::Tensor>& replace = {});

// Copies HF-named tensors into the model (converting dtype and device). Throws
// std::runtime_error listing missing tensors, unexpected names and shape mismatches; the
// model is unchanged unless every tensor matches.
void LoadHfStateDict(DeepSeekV3Impl& model, const std::map<std::string, torch::Tensor>& tensors);

}  // namespace dsv3::model
