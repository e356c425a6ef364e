#include "dsv3/data/mixture.h"

#include <algorithm>
#include <stdexcept>

#include "dsv3/common/check.h"

namespace dsv3::data {
namespace {

// splitmix64: a fixed, platform-independent generator (std:: distributions are not), so
// the same seed gives the same data order on every machine and library version.
uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, n) without modulo bias (Lemire).
uint64_t Below(uint64_t& state, uint64_t n) {
  while (true) {
    const unsigned __int128 m = static_cast<unsigned __int128>(SplitMix(state)) * n;
    const uint64_t low = static_cast<uint64_t>(m);
    if (low >= n || low >= (-n) % n) return static_cast<uint64_t>(m >> 64);
  }
}

}  // namespace

MixtureSampler::MixtureSampler(std::vector<SourceIndex> sources, const SamplerOptions& options)
    : sources_(std::move(sources)), options_(options) {
  DSV3_CHECK(options_.seq_length >= 1) << "seq_length " << options_.seq_length;
  double sum = 0;
  for (const auto& s : sources_) sum += s.weight;
  for (size_t i = 0; i < sources_.size(); ++i) {
    const SourceIndex& s = sources_[i];
    weights_.push_back(sum > 0 ? s.weight / sum : 1.0 / static_cast<double>(sources_.size()));
    Stream stream;
    for (size_t d = 0; d < s.documents.size(); ++d) {
      const DocumentSpan& doc = s.documents[d];
      if (options_.validation_fraction > 0 && InValidationSplit(doc.id_hash, options_.validation_fraction)) continue;
      stream.train_docs.push_back(static_cast<int64_t>(d));
      stream.tokens += doc.length;
    }
    if (stream.tokens <= 0) {
      throw std::runtime_error("source " + s.name + " (" + s.subset + ") has no training tokens (" +
                               std::to_string(s.documents.size()) + " documents in " +
                               std::to_string(s.files.size()) + " files)");
    }
    streams_.push_back(std::move(stream));
  }
  DSV3_CHECK(!streams_.empty()) << "no data sources";
  state_.taken.assign(sources_.size(), 0);
}

size_t MixtureSampler::ChooseSource(const std::vector<double>& weights, const std::vector<int64_t>& taken,
                                    int64_t next_sample) {
  size_t best = 0;
  double best_deficit = -1e300;
  for (size_t s = 0; s < weights.size(); ++s) {
    const double deficit = weights[s] * static_cast<double>(next_sample + 1) - static_cast<double>(taken[s]);
    if (deficit > best_deficit) {
      best_deficit = deficit;
      best = s;
    }
  }
  return best;
}

const MixtureSampler::EpochOrder& MixtureSampler::Epoch(size_t source, int64_t epoch) {
  Stream& stream = streams_[source];
  auto it = stream.epochs.find(epoch);
  if (it != stream.epochs.end()) return it->second;
  EpochOrder order;
  order.docs = stream.train_docs;
  if (options_.shuffle) {
    uint64_t state = options_.seed ^ (0xA0761D6478BD642Full * (source + 1)) ^ (0xE7037ED1A0B428DBull * (epoch + 1));
    for (size_t i = order.docs.size(); i > 1; --i) std::swap(order.docs[i - 1], order.docs[Below(state, i)]);
  }
  int64_t offset = 0;
  for (int64_t d : order.docs) {
    order.starts.push_back(offset);
    offset += sources_[source].documents[static_cast<size_t>(d)].length;
  }
  order.starts.push_back(offset);
  stream.max_epoch = std::max(stream.max_epoch, epoch);
  // Windows move forward through epochs: keep only the two newest orders.
  while (stream.epochs.size() >= 2) stream.epochs.erase(stream.epochs.begin());
  return stream.epochs.emplace(epoch, std::move(order)).first->second;
}

void MixtureSampler::ReadWindow(size_t source, int64_t window, int32_t* tokens, int32_t* segments) {
  const int64_t width = options_.seq_length + 1;
  const Stream& stream = streams_[source];
  int64_t position = window * options_.seq_length;
  int64_t filled = 0;
  int32_t segment = 0;
  while (filled < width) {
    const int64_t epoch = position / stream.tokens, offset = position % stream.tokens;
    const EpochOrder& order = Epoch(source, epoch);
    const size_t k = static_cast<size_t>(std::upper_bound(order.starts.begin(), order.starts.end(), offset) -
                                         order.starts.begin() - 1);
    const DocumentSpan& doc = sources_[source].documents[static_cast<size_t>(order.docs[k])];
    const int64_t within = offset - order.starts[k];
    const int64_t count = std::min(width - filled, doc.length - within);
    sources_[source].shards[static_cast<size_t>(doc.shard)]->Copy(doc.begin + within, count, tokens + filled);
    if (segments != nullptr) std::fill(segments + filled, segments + filled + count, segment);
    filled += count;
    position += count;
    ++segment;
  }
}

Batch MixtureSampler::NextBatch(int64_t global_batch, int rank, int world) {
  DSV3_CHECK(world >= 1 && rank >= 0 && rank < world && global_batch % world == 0)
      << "global batch " << global_batch << " over " << world << " ranks (rank " << rank << ")";
  const int64_t per_rank = global_batch / world;
  Batch batch;
  batch.rows = per_rank;
  batch.width = options_.seq_length + 1;
  batch.tokens.resize(static_cast<size_t>(batch.rows * batch.width));
  if (options_.segments) batch.segments.resize(batch.tokens.size());
  for (int64_t i = 0; i < global_batch; ++i) {
    const size_t source = ChooseSource(weights_, state_.taken, state_.next_sample);
    const int64_t window = state_.taken[source]++;
    ++state_.next_sample;
    const int64_t row = i - rank * per_rank;
    if (row < 0 || row >= per_rank) continue;  // another rank's sample
    batch.sources.push_back(static_cast<int32_t>(source));
    ReadWindow(source, window, batch.tokens.data() + row * batch.width,
               options_.segments ? batch.segments.data() + row * batch.width : nullptr);
  }
  return batch;
}

void MixtureSampler::Restore(const SamplerState& state) {
  DSV3_CHECK(state.taken.size() == sources_.size())
      << "sampler state for " << state.taken.size() << " sources, config has " << sources_.size();
  state_ = state;
}

std::vector<int64_t> MixtureSampler::EpochsStarted() const {
  std::vector<int64_t> out;
  for (size_t s = 0; s < streams_.size(); ++s) {
    // The last token read decides: windows of `taken` samples reach this far.
    const int64_t taken = state_.taken[s];
    const int64_t end = taken == 0 ? 0 : (taken - 1) * options_.seq_length + options_.seq_length;
    out.push_back(end / streams_[s].tokens + 1);
  }
  return out;
}

ValidationSet::ValidationSet(const std::vector<SourceIndex>& sources, bool whole_sources, double fraction,
                             int64_t seq_length, int64_t max_windows) {
  const int64_t width = seq_length + 1;
  std::vector<std::vector<int32_t>> per_source(sources.size());
  // Each source's validation tokens in file order, as far as its share of windows needs.
  const int64_t share = sources.empty() ? 0 : (max_windows + static_cast<int64_t>(sources.size()) - 1) /
                                                   static_cast<int64_t>(sources.size());
  for (size_t s = 0; s < sources.size(); ++s) {
    names_.push_back(sources[s].name);
    std::vector<int32_t>& stream = per_source[s];
    const int64_t needed = share * seq_length + 1;
    for (const auto& doc : sources[s].documents) {
      if (!whole_sources && !InValidationSplit(doc.id_hash, fraction)) continue;
      const size_t old = stream.size();
      stream.resize(old + static_cast<size_t>(doc.length));
      sources[s].shards[static_cast<size_t>(doc.shard)]->Copy(doc.begin, doc.length, stream.data() + old);
      if (static_cast<int64_t>(stream.size()) >= needed) break;
    }
  }
  windows_.width = width;
  for (int64_t w = 0; windows_.rows < max_windows; ++w) {
    bool any = false;
    for (size_t s = 0; s < sources.size() && windows_.rows < max_windows; ++s) {
      const std::vector<int32_t>& stream = per_source[s];
      if ((w + 1) * seq_length + 1 > static_cast<int64_t>(stream.size())) continue;
      any = true;
      windows_.tokens.insert(windows_.tokens.end(), stream.begin() + w * seq_length,
                             stream.begin() + w * seq_length + width);
      windows_.sources.push_back(static_cast<int32_t>(s));
      ++windows_.rows;
    }
    if (!any) break;
  }
}

}  // namespace dsv3::data
