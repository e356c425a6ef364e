// Token-shard cache (idempotence, invalidation, crash safety) and the mixture sampler
// (proportions, rank disjointness, exact resume, determinism, epochs, validation split).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "data_test_util.h"
#include "dsv3/data/mixture.h"
#include "dsv3/data/pipeline.h"
#include "dsv3/data/shard_cache.h"
#include "dsv3/data/tokenizer.h"
#include "test_util.h"

namespace dsv3::data {
namespace {

namespace fs = std::filesystem;
using test::DataConfig;
using test::DolmaDocs;
using test::TempDir;
using test::WriteFile;

class CacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.path() / "a" / "1.json.gz", DolmaDocs("alpha", 40));
    WriteFile(dir_.path() / "a" / "2.jsonl", DolmaDocs("alpha", 30, 40));
    WriteFile(dir_.path() / "b" / "1.json.gz", DolmaDocs("beta", 50));
    cfg_ = DataConfig(dir_.path(), {{"a", 1.0, (dir_.path() / "a" / "*").string()},
                                    {"b", 1.0, (dir_.path() / "b" / "*.json.gz").string()}});
    tokenizer_ = MakeTokenizer(cfg_.data.tokenizer, cfg_.model.vocab_size);
  }
  std::vector<fs::path> MetaFiles() const {
    std::vector<fs::path> out;
    for (const auto& e : fs::recursive_directory_iterator(dir_.path() / "cache"))
      if (e.path().string().size() > 10 && e.path().string().rfind(".meta.json") == e.path().string().size() - 10)
        out.push_back(e.path());
    return out;
  }
  TempDir dir_;
  config::Config cfg_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(CacheTest, SecondRunDoesNothing) {
  const PrepareReport first = PrepareCache(cfg_, *tokenizer_, 2);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first.files_total, 3);
  EXPECT_EQ(first.files_prepared, 3);
  EXPECT_EQ(first.documents, 120);
  const auto metas = MetaFiles();
  ASSERT_EQ(metas.size(), 3u);
  const auto written = fs::last_write_time(metas[0]);
  const PrepareReport second = PrepareCache(cfg_, *tokenizer_, 2);
  EXPECT_EQ(second.files_prepared, 0);
  EXPECT_EQ(second.files_cached, 3);
  EXPECT_EQ(second.tokens, 0);
  EXPECT_EQ(fs::last_write_time(metas[0]), written);
}

// Two jobs starting together prepare the same cache at the same time: both succeed and
// agree (found when two dsv3d jobs of one config started at once).
TEST_F(CacheTest, ConcurrentPreparationsOfOneCacheBothSucceed) {
  std::vector<PrepareReport> reports(4);
  std::vector<std::string> errors(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      try {
        reports[i] = PrepareCache(cfg_, *tokenizer_, 1);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(errors[i], "") << i;
    EXPECT_TRUE(reports[i].ok()) << i;
    EXPECT_EQ(reports[i].files_total, 3) << i;
  }
  const PrepareReport after = PrepareCache(cfg_, *tokenizer_, 1);
  EXPECT_EQ(after.files_cached, 3);
  EXPECT_EQ(after.files_prepared, 0);
  for (const auto& entry : fs::recursive_directory_iterator(cfg_.data.cache_dir)) {
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << entry.path();
  }
}

TEST_F(CacheTest, ShardsHoldEveryDocumentWithEosAsUint16) {
  ASSERT_TRUE(PrepareCache(cfg_, *tokenizer_, 1).ok());
  const auto sources = OpenCache(cfg_, cfg_.data.sources, *tokenizer_);
  ASSERT_EQ(sources.size(), 2u);
  EXPECT_EQ(sources[0].documents.size(), 70u);
  EXPECT_EQ(sources[0].files.size(), 2u);
  const DocumentSpan& doc = sources[0].documents[0];
  std::vector<int32_t> tokens(static_cast<size_t>(doc.length));
  sources[0].shards[0]->Copy(doc.begin, doc.length, tokens.data());
  EXPECT_EQ(tokens.back(), kByteEos);
  tokens.pop_back();
  EXPECT_EQ(tokenizer_->Decode(tokens), "alpha document 0: alpha0 alpha1 alpha2 alpha3 alpha4");
  // Byte ids fit 16 bits: two bytes per token on disk.
  int64_t tokens_total = 0;
  for (const auto& d : sources[1].documents) tokens_total += d.length;
  for (const auto& e : fs::recursive_directory_iterator(dir_.path() / "cache")) {
    if (e.path().extension() == ".tokens" && e.path().parent_path().filename() == cfg_.data.sources[1].subset) {
      EXPECT_EQ(static_cast<int64_t>(fs::file_size(e.path())), 2 * tokens_total);
    }
  }
}

TEST_F(CacheTest, AChangedFileIsRedoneAndOnlyThatFile) {
  ASSERT_TRUE(PrepareCache(cfg_, *tokenizer_, 2).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a distinct mtime
  WriteFile(dir_.path() / "b" / "1.json.gz", DolmaDocs("beta", 55));
  const PrepareReport r = PrepareCache(cfg_, *tokenizer_, 2);
  EXPECT_EQ(r.files_prepared, 1);
  EXPECT_EQ(r.files_cached, 2);
  EXPECT_EQ(r.documents, 55);
  EXPECT_EQ(OpenCache(cfg_, cfg_.data.sources, *tokenizer_)[1].documents.size(), 55u);
}

TEST_F(CacheTest, AnotherTokenizerGetsItsOwnShards) {
  ASSERT_TRUE(PrepareCache(cfg_, *tokenizer_, 2).ok());
  class Shifted final : public Tokenizer {  // a different tokenization, same vocabulary
   public:
    std::vector<int32_t> Encode(std::string_view t) const override {
      std::vector<int32_t> ids;
      for (unsigned char c : t) ids.push_back((c + 1) % 256);
      return ids;
    }
    std::string Decode(const std::vector<int32_t>&) const override { return ""; }
    int64_t vocab_size() const override { return 259; }
    int32_t eos_id() const override { return 257; }
    int32_t bos_id() const override { return 256; }
    std::string Fingerprint() const override { return "shifted-v1"; }
  } shifted;
  const PrepareReport r = PrepareCache(cfg_, shifted, 2);
  EXPECT_EQ(r.files_prepared, 3);
  EXPECT_TRUE(fs::exists(dir_.path() / "cache" / "shifted-v1"));
  EXPECT_EQ(PrepareCache(cfg_, *tokenizer_, 2).files_prepared, 0);  // the byte shards are intact
}

TEST_F(CacheTest, InterruptedPreparationIsNeverTrusted) {
  ASSERT_TRUE(PrepareCache(cfg_, *tokenizer_, 2).ok());
  const auto metas = MetaFiles();
  // A crash before the commit record: data files without meta.
  fs::remove(metas[0]);
  // A torn data file under an intact meta record.
  const std::string tokens1 = metas[1].string().substr(0, metas[1].string().size() - 10) + ".tokens";
  fs::resize_file(tokens1, fs::file_size(tokens1) / 2);
  // A temporary file left by a killed writer.
  WriteFile(metas[2].string() + ".tmp", "partial");
  EXPECT_THROW(OpenCache(cfg_, cfg_.data.sources, *tokenizer_), std::runtime_error);
  const PrepareReport r = PrepareCache(cfg_, *tokenizer_, 2);
  EXPECT_EQ(r.files_prepared, 2);
  EXPECT_EQ(r.files_cached, 1);
  EXPECT_NO_THROW(OpenCache(cfg_, cfg_.data.sources, *tokenizer_));
}

TEST_F(CacheTest, ASourceWithoutFilesIsAnErrorNamingIt) {
  config::Config cfg = DataConfig(dir_.path(), {{"a", 1.0, (dir_.path() / "a" / "*").string()},
                                                {"ghost", 1.0, (dir_.path() / "nowhere" / "*.json.gz").string()}});
  const PrepareReport r = PrepareCache(cfg, *tokenizer_, 2);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0], "/data/sources/1/paths: source \"ghost\" has no files (patterns: " +
                             (dir_.path() / "nowhere" / "*.json.gz").string() + ")");
  try {
    OpenDataPipeline(cfg);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("\"ghost\" has no files"), std::string::npos);
  }
}

TEST_F(CacheTest, ColdCacheErrorSaysHowToPrepare) {
  try {
    OpenCache(cfg_, cfg_.data.sources, *tokenizer_);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("run `dsv3ctl data prepare`"), std::string::npos) << e.what();
  }
  // The pipeline (what the trainer opens) prepares a cold cache itself.
  const DataPipeline p = OpenDataPipeline(cfg_);
  EXPECT_EQ(p.prepared.files_prepared, 3);
}

// ---------------------------------------------------------------- sampler

std::vector<std::vector<int32_t>> Rows(const Batch& b) {
  std::vector<std::vector<int32_t>> rows;
  for (int64_t r = 0; r < b.rows; ++r) rows.emplace_back(b.tokens.begin() + r * b.width, b.tokens.begin() + (r + 1) * b.width);
  return rows;
}

class SamplerTest : public CacheTest {
 protected:
  MixtureSampler Make(SamplerOptions o = {}) {
    if (!prepared_) {
      EXPECT_TRUE(PrepareCache(cfg_, *tokenizer_, 2).ok());
      prepared_ = true;
    }
    o.seq_length = 16;
    return MixtureSampler(OpenCache(cfg_, cfg_.data.sources, *tokenizer_), o);
  }
  bool prepared_ = false;
};

TEST(Mixture, ChooseSourceTracksWeightsWithinOneSample) {
  const std::vector<double> w = {0.5, 0.3, 0.15, 0.05};
  std::vector<int64_t> taken(4, 0);
  for (int64_t i = 0; i < 10000; ++i) {
    ++taken[MixtureSampler::ChooseSource(w, taken, i)];
    for (size_t s = 0; s < 4; ++s) EXPECT_LE(std::abs(static_cast<double>(taken[s]) - w[s] * (i + 1)), 1.0);
  }
  EXPECT_EQ(taken, (std::vector<int64_t>{5000, 3000, 1500, 500}));
}

TEST_F(SamplerTest, TokenProportionsFollowTheWeights) {
  cfg_.data.sources[0].weight = 0.8;
  cfg_.data.sources[1].weight = 0.2;
  MixtureSampler s = Make();
  std::vector<int64_t> rows(2, 0);
  for (int step = 0; step < 125; ++step) {
    const Batch b = s.NextBatch(8, 0, 1);
    for (int32_t src : b.sources) ++rows[static_cast<size_t>(src)];
  }
  // 1000 windows of equal length: 800 and 200 exactly (the rule is deterministic).
  EXPECT_EQ(rows, (std::vector<int64_t>{800, 200}));
}

TEST_F(SamplerTest, RanksGetDisjointSlicesThatTogetherAreTheGlobalBatch) {
  MixtureSampler one = Make(), r0 = Make(), r1 = Make();
  for (int step = 0; step < 6; ++step) {
    const auto all = Rows(one.NextBatch(8, 0, 1));
    const auto a = Rows(r0.NextBatch(8, 0, 2)), b = Rows(r1.NextBatch(8, 1, 2));
    ASSERT_EQ(a.size(), 4u);
    std::vector<std::vector<int32_t>> joined = a;
    joined.insert(joined.end(), b.begin(), b.end());
    EXPECT_EQ(joined, all) << "step " << step;
    for (const auto& row : a) EXPECT_EQ(std::count(b.begin(), b.end(), row), 0);
  }
  EXPECT_EQ(r0.state(), r1.state());
}

TEST_F(SamplerTest, ResumeContinuesExactly) {
  MixtureSampler straight = Make();
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 10; ++i) {
    const auto rows = Rows(straight.NextBatch(8, 0, 1));
    expected.insert(expected.end(), rows.begin(), rows.end());
  }
  MixtureSampler first = Make();
  std::vector<std::vector<int32_t>> got;
  for (int i = 0; i < 4; ++i) {
    const auto rows = Rows(first.NextBatch(8, 0, 1));
    got.insert(got.end(), rows.begin(), rows.end());
  }
  const SamplerState saved = first.state();
  MixtureSampler resumed = Make();
  resumed.Restore(saved);
  for (int i = 4; i < 10; ++i) {
    const auto rows = Rows(resumed.NextBatch(8, 0, 1));
    got.insert(got.end(), rows.begin(), rows.end());
  }
  EXPECT_EQ(got, expected);
}

TEST_F(SamplerTest, DeterministicForASeedAndDifferentForAnother) {
  SamplerOptions seed7, seed8;
  seed7.seed = 7;
  seed8.seed = 8;
  MixtureSampler a = Make(seed7), b = Make(seed7), c = Make(seed8);
  const auto ra = Rows(a.NextBatch(8, 0, 1));
  EXPECT_EQ(ra, Rows(b.NextBatch(8, 0, 1)));
  EXPECT_NE(ra, Rows(c.NextBatch(8, 0, 1)));
}

TEST_F(SamplerTest, WithoutShuffleWindowsFollowFileOrderAndOverlapByOneToken) {
  SamplerOptions o;
  o.shuffle = false;
  cfg_.data.sources[1].weight = 1e-9;  // nearly only source a
  MixtureSampler s = Make(o);
  const auto rows = Rows(s.NextBatch(8, 0, 1));
  const auto sources = OpenCache(cfg_, cfg_.data.sources, *tokenizer_);
  std::vector<int32_t> first(17);
  sources[0].shards[0]->Copy(0, 17, first.data());  // the first document of 1.json.gz
  EXPECT_EQ(rows[0], first);
  EXPECT_EQ(rows[0].back(), rows[1].front());  // stride seq_length, width seq_length + 1
}

TEST_F(SamplerTest, SmallSourcesRepeatInNewlyShuffledEpochs) {
  MixtureSampler s = Make();
  const int64_t tokens_b = s.TrainTokens(1);
  // Enough samples for source b to wrap: each takes 16 new tokens.
  const int64_t steps = (3 * tokens_b / 16) / 4 + 2;
  std::vector<std::vector<int32_t>> b_rows;
  for (int64_t i = 0; i < steps; ++i) {
    const Batch batch = s.NextBatch(8, 0, 1);
    const auto rows = Rows(batch);
    for (size_t r = 0; r < rows.size(); ++r)
      if (batch.sources[r] == 1) b_rows.push_back(rows[r]);
  }
  EXPECT_GE(s.EpochsStarted()[1], 3);
  const size_t per_epoch = static_cast<size_t>(tokens_b / 16);
  // Epoch 2 shows the same documents in another order.
  EXPECT_NE(std::vector<std::vector<int32_t>>(b_rows.begin(), b_rows.begin() + 5),
            std::vector<std::vector<int32_t>>(b_rows.begin() + per_epoch + 1, b_rows.begin() + per_epoch + 6));
}

TEST_F(SamplerTest, SegmentsNumberDocumentsInsideAWindow) {
  SamplerOptions o;
  o.segments = true;
  MixtureSampler s = Make(o);
  const Batch b = s.NextBatch(8, 0, 1);
  ASSERT_EQ(b.segments.size(), b.tokens.size());
  for (int64_t r = 0; r < b.rows; ++r) {
    EXPECT_EQ(b.segments[static_cast<size_t>(r * b.width)], 0);
    for (int64_t t = 1; t < b.width; ++t) {
      const size_t i = static_cast<size_t>(r * b.width + t);
      // A new document starts right after an EOS.
      EXPECT_EQ(b.segments[i], b.segments[i - 1] + (b.tokens[i - 1] == kByteEos ? 1 : 0));
    }
  }
}

TEST_F(SamplerTest, ValidationDocumentsNeverReachTraining) {
  ASSERT_TRUE(PrepareCache(cfg_, *tokenizer_, 2).ok());
  const auto sources = OpenCache(cfg_, cfg_.data.sources, *tokenizer_);
  std::set<std::vector<int32_t>> validation_docs;
  int64_t held_out = 0;
  for (const auto& src : sources) {
    for (const auto& d : src.documents) {
      if (!InValidationSplit(d.id_hash, 0.3)) continue;
      std::vector<int32_t> t(static_cast<size_t>(d.length));
      src.shards[static_cast<size_t>(d.shard)]->Copy(d.begin, d.length, t.data());
      validation_docs.insert(t);
      ++held_out;
    }
  }
  EXPECT_GT(held_out, 15);  // about 30% of 120
  EXPECT_LT(held_out, 60);
  SamplerOptions o;
  o.validation_fraction = 0.3;
  o.seq_length = 16;
  MixtureSampler s(OpenCache(cfg_, cfg_.data.sources, *tokenizer_), o);
  int64_t train_docs_tokens = s.TrainTokens(0) + s.TrainTokens(1), all = sources[0].tokens + sources[1].tokens;
  int64_t validation_tokens = 0;
  for (const auto& d : validation_docs) validation_tokens += static_cast<int64_t>(d.size());
  EXPECT_EQ(train_docs_tokens + validation_tokens, all);
  const ValidationSet v(sources, false, 0.3, 16, 6);
  EXPECT_EQ(v.windows().rows, 6);
  EXPECT_EQ(v.windows().sources, (std::vector<int32_t>{0, 1, 0, 1, 0, 1}));
}

}  // namespace
}  // namespace dsv3::data
