#include "dsv3/data/tokenizer.h"

#include <cstdio>
#include <stdexcept>

namespace dsv3::data {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (int32_t id : ids) {
      if (id >= 0 && id < 256) out.push_back(static_cast<char>(id));
    }
    return out;
  }
  int64_t vocab_size() const override { return kByteVocab; }
  int32_t eos_id() const override { return kByteEos; }
  int32_t bos_id() const override { return kByteBos; }
  std::string Fingerprint() const override { return "byte-v1"; }
};

}  // namespace

// Defined in sentencepiece_tokenizer.cc, or below when the build has no sentencepiece.
std::unique_ptr<Tokenizer> MakeSentencePieceTokenizer(const std::string& model_path);

std::unique_ptr<Tokenizer> MakeTokenizer(const config::TokenizerConfig& cfg, int64_t model_vocab_size) {
  std::unique_ptr<Tokenizer> tokenizer;
  if (cfg.type == "byte") {
    tokenizer = std::make_unique<ByteTokenizer>();
  } else if (cfg.type == "sentencepiece") {
    tokenizer = MakeSentencePieceTokenizer(cfg.model);
  } else {
    throw std::runtime_error("/data/tokenizer/type: \"" + cfg.type + "\" is not one of: byte, sentencepiece");
  }
  if (tokenizer->vocab_size() > model_vocab_size) {
    throw std::runtime_error("/model/vocab_size: " + std::to_string(model_vocab_size) + " does not cover the " +
                             cfg.type + " tokenizer's " + std::to_string(tokenizer->vocab_size()) +
                             " ids; set vocab_size to at least that");
  }
  return tokenizer;
}

uint64_t Fnv1a(std::string_view bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string Fnv1aHex(std::string_view bytes) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(Fnv1a(bytes)));
  return buf;
}

#ifndef DSV3_WITH_SENTENCEPIECE
std::unique_ptr<Tokenizer> MakeSentencePieceTokenizer(const std::string&) {
  throw std::runtime_error(
      "/data/tokenizer/type: \"sentencepiece\" is not available in this build (built without libsentencepiece; "
      "install libsentencepiece-dev and rebuild, or use \"byte\")");
}
void TrainSentencePiece(const std::string&, const std::string&, int64_t, int) {
  throw std::runtime_error("training a SentencePiece model needs a build with libsentencepiece");
}
bool HaveSentencePiece() { return false; }
#endif

}  // namespace dsv3::data
