// Deterministic domain mixing over the token cache.
//
// Each source is a token stream: its training documents (EOS-terminated) concatenated in an
// order that is reshuffled every epoch (seeded by shuffle_seed, the source and the epoch;
// file order with preprocessing.shuffle false), repeating when it runs out. Global sample i
// is one window of seq_length + 1 tokens from one source; consecutive windows of a source
// overlap by one token, so every token is a target exactly once per epoch. The source of
// sample i is chosen deterministically so that every source's share of samples (and so of
// tokens) tracks its normalized weight within one sample: the source with the largest
// deficit weight x (i + 1) - taken goes next (Megatron's blended-dataset rule).
//
// A global batch of B samples is split into data-parallel slices: rank r of R takes samples
// [r B/R, (r+1) B/R) of the batch, disjoint across ranks. Every rank advances the same
// small state (next sample, samples taken per source), which goes into checkpoints and
// does not depend on the rank or the number of ranks.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dsv3/data/shard_cache.h"

namespace dsv3::data {

struct SamplerOptions {
  int64_t seq_length = 2048;
  bool shuffle = true;
  uint64_t seed = 42;                // preprocessing.shuffle_seed
  double validation_fraction = 0.0;  // documents held out of training (0: none)
  bool segments = false;             // per-token document index within a window
};

// Rows of windows: tokens[r * width + t]. segments (when requested) number the documents
// inside a row from 0, for resetting attention and positions at document boundaries.
struct Batch {
  int64_t rows = 0, width = 0;
  std::vector<int32_t> tokens;
  std::vector<int32_t> segments;
  std::vector<int32_t> sources;  // per row: index of the source
};

struct SamplerState {
  int64_t next_sample = 0;
  std::vector<int64_t> taken;  // samples drawn per source
  bool operator==(const SamplerState& o) const { return next_sample == o.next_sample && taken == o.taken; }
};

class MixtureSampler {
 public:
  // Throws std::runtime_error when a source has no training tokens.
  MixtureSampler(std::vector<SourceIndex> sources, const SamplerOptions& options);

  // This rank's slice of the next global batch of `global_batch` samples; advances the state
  // by the whole batch. global_batch must be divisible by world.
  Batch NextBatch(int64_t global_batch, int rank, int world);

  SamplerState state() const { return state_; }
  // Continues exactly where `state` was taken (with any rank count).
  void Restore(const SamplerState& state);

  // Epochs begun so far per source (1 = no repetition yet).
  std::vector<int64_t> EpochsStarted() const;
  const std::vector<SourceIndex>& sources() const { return sources_; }
  int64_t TrainTokens(size_t source) const { return streams_[source].tokens; }

  // Source chosen for global sample `next_sample` given the samples taken so far.
  static size_t ChooseSource(const std::vector<double>& weights, const std::vector<int64_t>& taken, int64_t next_sample);

 private:
  struct EpochOrder {
    std::vector<int64_t> docs;  // indices into SourceIndex::documents
    std::vector<int64_t> starts;  // token offset of each doc in the epoch's stream, + total
  };
  struct Stream {
    std::vector<int64_t> train_docs;
    int64_t tokens = 0;
    std::map<int64_t, EpochOrder> epochs;  // a few recent epochs, built on demand
    int64_t max_epoch = 0;
  };
  const EpochOrder& Epoch(size_t source, int64_t epoch);
  void ReadWindow(size_t source, int64_t window, int32_t* tokens, int32_t* segments);

  std::vector<SourceIndex> sources_;
  SamplerOptions options_;
  std::vector<double> weights_;
  std::vector<Stream> streams_;
  SamplerState state_;
};

// The held-out windows for evaluation: per source, its validation documents (the split of
// its files, or all of validation.sources) in file order, packed into windows; at most
// `max_windows` in all, shared round-robin by the sources. Deterministic and fixed.
class ValidationSet {
 public:
  ValidationSet(const std::vector<SourceIndex>& sources, bool whole_sources, double fraction, int64_t seq_length,
                int64_t max_windows);
  const Batch& windows() const { return windows_; }
  const std::vector<std::string>& source_names() const { return names_; }

 private:
  Batch windows_;
  std::vector<std::string> names_;
};

}  // namespace dsv3::data
