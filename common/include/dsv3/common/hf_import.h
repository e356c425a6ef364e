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

}  // namespace dsv3::config
