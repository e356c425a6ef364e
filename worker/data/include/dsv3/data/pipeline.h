// The data section of a config, end to end: tokenizer, token cache (prepared on the spot
// when cold, as the trainer needs), training mixture and validation windows.
#pragma once

#include <functional>
#include <memory>

#include "dsv3/common/config.h"
#include "dsv3/data/mixture.h"
#include "dsv3/data/shard_cache.h"
#include "dsv3/data/tokenizer.h"

namespace dsv3::data {

struct DataPipeline {
  std::unique_ptr<Tokenizer> tokenizer;
  PrepareReport prepared;                    // what this call had to tokenize
  std::unique_ptr<MixtureSampler> sampler;   // training windows
  std::unique_ptr<ValidationSet> validation;  // null when validation is disabled
};

// Throws std::runtime_error with a message naming the field or file when the data cannot be
// used (no files for a source, a tokenizer that does not fit the model, no training tokens).
DataPipeline OpenDataPipeline(const config::Config& cfg, const std::function<void(const PrepareProgress&)>& progress = {});

}  // namespace dsv3::data
