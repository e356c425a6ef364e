#include "dsv3/data/pipeline.h"

#include <stdexcept>

namespace dsv3::data {

DataPipeline OpenDataPipeline(const config::Config& cfg, const std::function<void(const PrepareProgress&)>& progress) {
  DataPipeline p;
  p.tokenizer = MakeTokenizer(cfg.data.tokenizer, cfg.model.vocab_size);
  p.prepared = PrepareCache(cfg, *p.tokenizer, static_cast<int>(cfg.data.preprocessing.num_workers), progress);
  if (!p.prepared.ok()) {
    std::string message = "data preparation failed:";
    for (const auto& e : p.prepared.errors) message += "\n  " + e;
    throw std::runtime_error(message);
  }
  const bool separate_validation = !cfg.validation.sources.empty();
  SamplerOptions options;
  options.seq_length = cfg.training.seq_length;
  options.shuffle = cfg.data.preprocessing.shuffle;
  options.seed = static_cast<uint64_t>(cfg.data.preprocessing.shuffle_seed);
  options.validation_fraction = cfg.validation.enabled && !separate_validation ? cfg.validation.split_fraction : 0.0;
  options.segments = cfg.data.reset_attention_mask;
  std::vector<SourceIndex> train = OpenCache(cfg, cfg.data.sources, *p.tokenizer);
  if (cfg.validation.enabled) {
    const int64_t windows = cfg.validation.eval_batches * cfg.validation.micro_batch_size;
    if (separate_validation) {
      p.validation = std::make_unique<ValidationSet>(OpenCache(cfg, cfg.validation.sources, *p.tokenizer), true, 1.0,
                                                     cfg.training.seq_length, windows);
    } else {
      p.validation = std::make_unique<ValidationSet>(train, false, cfg.validation.split_fraction,
                                                     cfg.training.seq_length, windows);
    }
  }
  p.sampler = std::make_unique<MixtureSampler>(std::move(train), options);
  return p;
}

}  // namespace dsv3::data
