// The sentencepiece tokenizer: a plugin (libdsv3_sentencepiece.so) that tokenizer.cc loads
// with dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Debian's libsentencepiece carries its own copy of
// protobuf-lite whose exported symbols collide with the libprotobuf that LibTorch loads
// (a crash during start-up when both are linked); loaded privately, each keeps its own.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "dsv3/data/tokenizer.h"

namespace dsv3::data {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("/data/tokenizer/model: \"" + path + "\" cannot be opened");
    std::ostringstream bytes;
    bytes << in.rdbuf();
    const std::string model = bytes.str();
    const auto status = processor_.LoadFromSerializedProto(model);
    if (!status.ok()) {
      throw std::runtime_error("/data/tokenizer/model: \"" + path + "\" is not a SentencePiece model (" +
                               status.ToString() + ")");
    }
    if (processor_.eos_id() < 0) {
      throw std::runtime_error("/data/tokenizer/model: \"" + path +
                               "\" has no end-of-sentence piece; dsv3 separates documents with EOS");
    }
    fingerprint_ = "sentencepiece-" + Fnv1aHex(model);
  }
  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int> ids;
    processor_.Encode(std::string(text), &ids);
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    processor_.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    return out;
  }
  int64_t vocab_size() const override { return processor_.GetPieceSize(); }
  int32_t eos_id() const override { return processor_.eos_id(); }
  int32_t bos_id() const override { return processor_.bos_id(); }
  int32_t pad_id() const override { return processor_.pad_id(); }
  std::string Fingerprint() const override { return fingerprint_; }

 private:
  sentencepiece::SentencePieceProcessor processor_;
  std::string fingerprint_;
};

}  // namespace

Tokenizer* MakeSentencePieceTokenizerImpl(const std::string& model_path) {
  return new SentencePieceTokenizer(model_path);
}

void TrainSentencePieceImpl(const std::string& text_file, const std::string& model_prefix, int64_t vocab_size,
                            int num_threads) {
  std::ostringstream args;
  args << "--input=" << text_file << " --model_prefix=" << model_prefix << " --vocab_size=" << vocab_size
       << " --model_type=unigram --character_coverage=0.9995 --byte_fallback=true"
       << " --pad_id=0 --eos_id=1 --bos_id=2 --unk_id=3 --num_threads=" << num_threads
       << " --input_sentence_size=2000000 --shuffle_input_sentence=true --minloglevel=2";
  const auto status = sentencepiece::SentencePieceTrainer::Train(args.str());
  if (!status.ok()) throw std::runtime_error("SentencePiece training failed: " + status.ToString());
}

}  // namespace dsv3::data

// The plugin's entry points, looked up with dlsym. Exceptions cross the boundary as the
// same C++ runtime is shared.
extern "C" {
dsv3::data::Tokenizer* dsv3_sentencepiece_make(const std::string* model_path) {
  return dsv3::data::MakeSentencePieceTokenizerImpl(*model_path);
}
void dsv3_sentencepiece_train(const std::string* text_file, const std::string* model_prefix, int64_t vocab_size,
                              int num_threads) {
  dsv3::data::TrainSentencePieceImpl(*text_file, *model_prefix, vocab_size, num_threads);
}
}
