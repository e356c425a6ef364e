#include "dsv3/data/tokenizer.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "dsv3/common/env.h"

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
  int32_t pad_id() const override { return kBytePad; }
  std::string Fingerprint() const override { return "byte-v1"; }
};


// The sentencepiece plugin (see sentencepiece_tokenizer.cc), loaded on first use.
struct SentencePiecePlugin {
  using Make = Tokenizer* (*)(const std::string*);
  using Train = void (*)(const std::string*, const std::string*, int64_t, int);
  Make make = nullptr;
  Train train = nullptr;
  std::string error;
};

const SentencePiecePlugin& Plugin() {
  static const SentencePiecePlugin plugin = [] {
    SentencePiecePlugin p;
#ifdef DSV3_SENTENCEPIECE_PLUGIN
    // $DSV3_SENTENCEPIECE_PLUGIN, else lib/dsv3/ beside the program's folder: <prefix>/lib/dsv3
    // once installed, <build>/lib/dsv3 in the build tree (every program there is one folder
    // deep). No build-tree path is compiled in.
    std::error_code ec;
    const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    std::string path = (exe.parent_path().parent_path() / "lib" / "dsv3" / DSV3_SENTENCEPIECE_PLUGIN).string();
    if (const char* env = std::getenv(env::kSentencepiecePlugin)) path = env;
    // Where LibTorch's libprotobuf is loaded, the plugin's protobuf-lite must bind to itself
    // (RTLD_DEEPBIND); elsewhere plain loading keeps sentencepiece's own logging (std::cerr
    // through copy relocations, which DEEPBIND breaks) working.
    const bool protobuf_loaded = dlopen("libprotobuf.so.32", RTLD_NOW | RTLD_NOLOAD) != nullptr;
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | (protobuf_loaded ? RTLD_DEEPBIND : 0));
    if (handle == nullptr) {
      const char* why = dlerror();
      p.error = "cannot load the sentencepiece plugin " + path + ": " + (why ? why : "unknown error");
      return p;
    }
    p.make = reinterpret_cast<SentencePiecePlugin::Make>(dlsym(handle, "dsv3_sentencepiece_make"));
    p.train = reinterpret_cast<SentencePiecePlugin::Train>(dlsym(handle, "dsv3_sentencepiece_train"));
    if (p.make == nullptr || p.train == nullptr) p.error = path + " is not the dsv3 sentencepiece plugin";
#else
    p.error = "this build has no libsentencepiece (install libsentencepiece-dev and rebuild)";
#endif
    return p;
  }();
  return plugin;
}

std::unique_ptr<Tokenizer> MakeSentencePieceTokenizer(const std::string& model_path) {
  const SentencePiecePlugin& p = Plugin();
  if (p.make == nullptr) {
    throw std::runtime_error("/data/tokenizer/type: \"sentencepiece\" is not available: " + p.error +
                             "; or use \"byte\"");
  }
  return std::unique_ptr<Tokenizer>(p.make(&model_path));
}

}  // namespace

void TrainSentencePiece(const std::string& text_file, const std::string& model_prefix, int64_t vocab_size,
                        int num_threads) {
  const SentencePiecePlugin& p = Plugin();
  if (p.train == nullptr) throw std::runtime_error("training a SentencePiece model is not available: " + p.error);
  p.train(&text_file, &model_prefix, vocab_size, num_threads);
}

bool HaveSentencePiece() { return Plugin().make != nullptr; }

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



}  // namespace dsv3::data
