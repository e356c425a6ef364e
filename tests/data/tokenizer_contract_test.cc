// The Tokenizer contract: every tokenizer passes the same typed tests — text round-trips
// through Encode/Decode (UTF-8 included), ids stay inside the vocabulary, specials are not
// text, Encode is deterministic and thread-safe, the fingerprint names the tokenization,
// and a model vocabulary too small for the ids is refused naming /model/vocab_size.
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dsv3/data/dolma_reader.h"
#include "dsv3/data/synth.h"
#include "dsv3/data/tokenizer.h"
#include "test_util.h"

namespace dsv3::data {
namespace {

struct ByteKind {
  static std::string Name() { return "byte"; }
  static bool Available() { return true; }
  // The config and the tokenizer's vocabulary size.
  static std::pair<config::TokenizerConfig, int64_t> Make(const std::filesystem::path&) {
    return {config::TokenizerConfig{}, kByteVocab};
  }
};

struct SentencePieceKind {
  static std::string Name() { return "sentencepiece"; }
  static bool Available() { return HaveSentencePiece(); }
  // A 400-piece unigram model trained on a synthetic corpus.
  static std::pair<config::TokenizerConfig, int64_t> Make(const std::filesystem::path& dir) {
    SynthesizeDolma((dir / "corpus").string(), 300, 1);
    const std::string text_file = (dir / "sample.txt").string();
    {
      std::ofstream out(text_file);
      for (const char* subset : {"dolma_v1_6_cc", "dolma_v1_6_wikimedia", "dolma_v1_6_starcoder"}) {
        ReadDolmaFile((dir / "corpus" / subset / "part-0000.json.gz").string(),
                      [&](Document&& d) { out << d.text << "\n"; });
      }
    }
    TrainSentencePiece(text_file, (dir / "sp").string(), 400, 2);
    config::TokenizerConfig cfg;
    cfg.type = "sentencepiece";
    cfg.model = (dir / "sp.model").string();
    return {cfg, 400};
  }
};

template <typename Kind>
class TokenizerContract : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!Kind::Available()) return;
    dir_ = new test::TempDir();
    auto [cfg, vocab] = Kind::Make(dir_->path());
    cfg_ = new config::TokenizerConfig(cfg);
    vocab_ = vocab;
  }
  static void TearDownTestSuite() {
    delete cfg_;
    delete dir_;
    cfg_ = nullptr;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!Kind::Available()) GTEST_SKIP() << Kind::Name() << " is not in this build";
    tok_ = MakeTokenizer(*cfg_, vocab_);
  }
  static inline test::TempDir* dir_ = nullptr;
  static inline config::TokenizerConfig* cfg_ = nullptr;
  static inline int64_t vocab_ = 0;
  std::unique_ptr<Tokenizer> tok_;
};

using Kinds = ::testing::Types<ByteKind, SentencePieceKind>;
TYPED_TEST_SUITE(TokenizerContract, Kinds, test::NamedByType);

// Text in every tokenizer's normal form: SentencePiece's default normalization (nmt_nfkc)
// folds newlines, tabs and runs of spaces into one space, so those are left out here.
const std::vector<std::string>& Samples() {
  static const std::vector<std::string> s = {
      "The old museum was built by Ada in 1906.", "def add_3(x): return x + 3", "caf\u00e9 na\u00efve \u00fcber",
      "", "a"};
  return s;
}

TYPED_TEST(TokenizerContract, TextRoundTripsAndIdsStayInTheVocabulary) {
  EXPECT_EQ(this->tok_->vocab_size(), this->vocab_);
  for (const std::string& text : Samples()) {
    const std::vector<int32_t> ids = this->tok_->Encode(text);
    EXPECT_EQ(this->tok_->Decode(ids), text) << text;
    EXPECT_EQ(ids.empty(), text.empty()) << text;
    for (int32_t id : ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, this->tok_->vocab_size());
    }
  }
}

TYPED_TEST(TokenizerContract, SpecialsAreDistinctIdsThatDecodeToNoText) {
  const int32_t eos = this->tok_->eos_id(), bos = this->tok_->bos_id();
  EXPECT_NE(eos, bos);
  EXPECT_LT(eos, this->tok_->vocab_size());
  EXPECT_LT(bos, this->tok_->vocab_size());
  std::vector<int32_t> ids = this->tok_->Encode("Hi");
  const std::string plain = this->tok_->Decode(ids);
  ids.insert(ids.begin(), bos);
  ids.push_back(eos);
  EXPECT_EQ(this->tok_->Decode(ids), plain);
}

TYPED_TEST(TokenizerContract, EncodeIsDeterministicAndSafeFromManyThreads) {
  const std::string text = Samples()[0] + " " + Samples()[1];
  const std::vector<int32_t> want = this->tok_->Encode(text);
  std::vector<std::future<std::vector<int32_t>>> runs;
  for (int i = 0; i < 4; ++i) {
    runs.push_back(std::async(std::launch::async, [&] { return this->tok_->Encode(text); }));
  }
  for (auto& r : runs) EXPECT_EQ(r.get(), want);
}

TYPED_TEST(TokenizerContract, FingerprintNamesTheTokenizationAndIsStable) {
  const std::string f = this->tok_->Fingerprint();
  EXPECT_EQ(f.rfind(TypeParam::Name() + "-", 0), 0u) << f;
  EXPECT_EQ(MakeTokenizer(*this->cfg_, this->vocab_)->Fingerprint(), f);
}

TYPED_TEST(TokenizerContract, AModelVocabularyTooSmallIsRefusedNamingTheField) {
  try {
    MakeTokenizer(*this->cfg_, this->vocab_ - 1);
    FAIL() << "a vocabulary of " << this->vocab_ - 1 << " was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("/model/vocab_size: " + std::to_string(this->vocab_ - 1), 0), 0u)
        << e.what();
  }
}

}  // namespace
}  // namespace dsv3::data
