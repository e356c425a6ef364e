// Turns a HuggingFace DeepSeek-V2/V3 `config.json` into a complete dsv3 config: the model
// section from the HF fields, every other section at its defaults. The mapping is the
// inverse of the one the checkpoint exporter writes (dsv3ctl export-hf).
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"

namespace dsv3::config {

struct HfImportResult {
  nlohmann::json config;  // a full dsv3 config (valid when errors is empty)
  std::vector<Diagnostic> errors;    // paths point into the HF config, e.g. /moe_layer_freq
  std::vector<Diagnostic> warnings;  // HF features dsv3 does not reproduce
  bool ok() const { return errors.empty(); }
};

HfImportResult ImportHfConfig(const nlohmann::json& hf_config);

// The inverse: a HF DeepseekV3 `config.json` for a resolved config's model, as written next
// to exported weights. Errors name what HF's DeepseekV3 cannot express (LayerNorm, a dense
// layer interval other than 0 or 2, GQA inside MLA, softmax routing with aux-loss-free bias).
HfImportResult ExportHfConfig(const Config& config);

// Whether HF weights described by `hf_config` (a config.json) load into a model of the
// validated `config`: one error per model field that differs (path /model/..., both values),
// errors for HF fields dsv3 cannot import, and an error when the config predicts more tokens
// (training.num_predict_tokens) than the HF model has MTP layers. Fields that do not shape
// or route (dropouts, balance-loss weights, capacity, initialisation) may differ.
std::vector<Diagnostic> CompareWithHfConfig(const Config& config, const nlohmann::json& hf_config);

// The MTP layers a HF config.json holds (num_nextn_predict_layers; 0 when absent).
int64_t HfMtpLayers(const nlohmann::json& hf_config);

}  // namespace dsv3::config
