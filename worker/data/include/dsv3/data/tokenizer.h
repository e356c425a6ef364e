// Tokenizers behind one interface: `byte` (UTF-8 bytes + BOS/EOS/PAD, no files) and
// `sentencepiece` (a .model file, through Debian's libsentencepiece). Encode/Decode are
// const and thread-safe, so preparation workers share one tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dsv3/common/config.h"

namespace dsv3::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t eos_id() const = 0;  // appended after every document
  virtual int32_t bos_id() const = 0;
  virtual int32_t pad_id() const { return -1; }  // -1: the tokenizer has none
  // Identifies the exact tokenization (type + model file contents), for the shard cache.
  virtual std::string Fingerprint() const = 0;
};

// The byte tokenizer's ids: bytes 0-255, then these.
inline constexpr int32_t kByteBos = 256, kByteEos = 257, kBytePad = 258, kByteVocab = 259;

// Builds the configured tokenizer. Throws std::runtime_error naming the field when the model
// file cannot be loaded, sentencepiece is not built in, or `model_vocab_size` (the model's
// vocab_size) does not cover the tokenizer's ids.
std::unique_ptr<Tokenizer> MakeTokenizer(const config::TokenizerConfig& cfg, int64_t model_vocab_size);

// Trains a SentencePiece (unigram) model of `vocab_size` pieces on `text_file` (one sentence
// per line) into `<model_prefix>.model` / `.vocab`, with ids 0 pad, 1 eos, 2 bos, 3 unk.
// Throws std::runtime_error on failure.
void TrainSentencePiece(const std::string& text_file, const std::string& model_prefix, int64_t vocab_size,
                        int num_threads);

// Whether this build has libsentencepiece.
bool HaveSentencePiece();

// FNV-1a 64 of bytes (and as 16 hex digits): cache keys and split keys, not security.
// Inline: the sentencepiece plugin uses it too.
inline uint64_t Fnv1a(std::string_view bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}
inline std::string Fnv1aHex(std::string_view bytes) {
  static const char kDigits[] = "0123456789abcdef";
  uint64_t h = Fnv1a(bytes);
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) out[static_cast<size_t>(i)] = kDigits[h & 0xF];
  return out;
}

}  // namespace dsv3::data
