// `dsv3ctl data synth`: a synthetic corpus in Dolma v1.6's format for all 13 sources of the
// guide, so the quickstart and tests train on realistic files without a download.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dsv3::data {

struct SynthReport {
  int64_t documents = 0;
  int64_t bytes = 0;  // uncompressed JSON
  std::vector<std::string> files;
};

// Writes <out_dir>/<subset>/part-NNNN.json.gz (at most 20,000 documents a file) for every
// Dolma v1.6 subset, `docs_per_source` documents each (~0.3 KB of text on average, so the
// corpus scales from a few hundred KB to GBs). Deterministic for `seed`; files appear under
// their final names only when complete. Throws std::runtime_error on I/O errors.
SynthReport SynthesizeDolma(const std::string& out_dir, int64_t docs_per_source, uint64_t seed,
                            const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace dsv3::data
