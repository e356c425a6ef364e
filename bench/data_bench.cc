// Data pipeline throughput: gzip decompression alone, the Dolma reader (decompression +
// JSON), `prepare` with 1 and 2 threads, and the mixture sampler. Prints figures only.
//
//   data_bench [--docs 20000] [--dir /tmp/dsv3_data_bench] [--seq 2048] [--batch 64]
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/data/dolma_reader.h"
#include "dsv3/data/mixture.h"
#include "dsv3/data/shard_cache.h"
#include "dsv3/data/synth.h"
#include "dsv3/data/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

int main(int argc, char** argv) {
  int64_t docs = 20000, seq = 2048, batch = 64;
  std::string dir = "/tmp/dsv3_data_bench";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--docs") docs = std::stoll(v);
    else if (k == "--dir") dir = v;
    else if (k == "--seq") seq = std::stoll(v);
    else if (k == "--batch") batch = std::stoll(v);
    else {
      std::cerr << "unknown argument " << k << "\n";
      return 2;
    }
  }
  fs::remove_all(dir);
  auto start = Clock::now();
  const dsv3::data::SynthReport synth = dsv3::data::SynthesizeDolma(dir + "/corpus", docs, 1);
  std::printf("data_bench: %lld documents, %.1f MB of JSON in %zu files (synthesized in %.1f s)\n",
              static_cast<long long>(synth.documents), synth.bytes / 1e6, synth.files.size(), Seconds(start));

  // 1. zlib alone: the floor for preparation.
  start = Clock::now();
  std::vector<char> buffer(1 << 20);
  int64_t raw = 0;
  for (const auto& f : synth.files) {
    gzFile gz = gzopen(f.c_str(), "rb");
    for (int n; (n = gzread(gz, buffer.data(), static_cast<unsigned>(buffer.size()))) > 0;) raw += n;
    gzclose(gz);
  }
  const double gunzip_mbps = raw / 1e6 / Seconds(start);
  std::printf("  gzip decompression only (1 thread):    %8.1f MB/s\n", gunzip_mbps);

  // 2. The reader: decompression + line splitting + JSON.
  start = Clock::now();
  int64_t read_bytes = 0;
  for (const auto& f : synth.files) read_bytes += dsv3::data::ReadDolmaFile(f, [](dsv3::data::Document&&) {}).bytes;
  std::printf("  Dolma reader (1 thread):               %8.1f MB/s\n", read_bytes / 1e6 / Seconds(start));

  // 3. prepare: reader + byte tokenizer + shard writing.
  nlohmann::json sources = nlohmann::json::array();
  for (const auto& subset : dsv3::config::DolmaSubsets()) {
    sources.push_back({{"subset", subset}, {"paths", {dir + "/corpus/" + subset + "/*.json.gz"}}});
  }
  for (int threads : {1, 2}) {
    const nlohmann::json text = {
        {"data", {{"sources", sources}, {"cache_dir", dir + "/cache" + std::to_string(threads)}}},
        {"model", {{"vocab_size", 272}, {"mla", {{"max_context_length", seq}}}}},
        {"training", {{"seq_length", seq}, {"global_batch_size", batch}, {"micro_batch_size", 1}, {"train_steps", 1}}}};
    const dsv3::config::LoadResult cfg = dsv3::config::LoadConfigText(text.dump());
    if (!cfg.ok()) {
      std::cerr << cfg.errors[0].ToString() << "\n";
      return 1;
    }
    const auto tokenizer = dsv3::data::MakeTokenizer(cfg.config.data.tokenizer, 272);
    const dsv3::data::PrepareReport r = dsv3::data::PrepareCache(cfg.config, *tokenizer, threads);
    std::printf("  prepare, byte tokenizer (%d thread%s):  %8.1f MB/s  %6.1f M tokens/s  (%.1f MB/s per thread)\n",
                threads, threads == 1 ? ") " : "s)", r.bytes / 1e6 / r.seconds, r.tokens / 1e6 / r.seconds,
                r.bytes / 1e6 / r.seconds / threads);
    if (threads == 2) {
      // 4. The sampler over the prepared cache.
      dsv3::data::SamplerOptions o;
      o.seq_length = seq;
      dsv3::data::MixtureSampler sampler(dsv3::data::OpenCache(cfg.config, cfg.config.data.sources, *tokenizer), o);
      start = Clock::now();
      int64_t tokens = 0;
      for (int step = 0; step < 50; ++step) tokens += static_cast<int64_t>(sampler.NextBatch(batch, 0, 1).tokens.size());
      std::printf("  mixture sampler (batch %lld x %lld):     %8.1f M tokens/s\n", static_cast<long long>(batch),
                  static_cast<long long>(seq + 1), tokens / 1e6 / Seconds(start));
    }
  }
  fs::remove_all(dir);
  return 0;
}
