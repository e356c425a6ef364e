// HF weights into the model (ckpt/hf_checkpoint.h, train/hf_weights.h): export then import is
// exact, FP8 block-scaled weights dequantize to the values DeepSeek's scheme defines, sharded
// index files load, each expert-parallel rank or pipeline stage reads only what it keeps, and
// a broken directory is an error naming the file and the tensor.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dsv3/ckpt/hf_checkpoint.h"
#include "dsv3/ckpt/safetensors.h"
#include "dsv3/common/hf_import.h"
#include "dsv3/model/hf_state_dict.h"
#include "dsv3/model/model.h"
#include "dsv3/train/hf_weights.h"
#include "model_test_util.h"
#include "test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

// One tensor as raw safetensors bytes (any dtype name, FP8 included).
struct RawTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

RawTensor Raw(const std::string& name, const torch::Tensor& t) {
  static const std::map<torch::ScalarType, std::string> kNames = {
      {torch::kFloat, "F32"}, {torch::kBFloat16, "BF16"}, {torch::kHalf, "F16"}, {torch::kInt, "I32"}};
  const torch::Tensor c = t.contiguous();
  return {name, kNames.at(c.scalar_type()), c.sizes().vec(),
          std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size())};
}

void WriteRaw(const fs::path& path, const std::vector<RawTensor>& tensors) {
  json header = json::object();
  int64_t offset = 0;
  for (const RawTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + (int64_t)t.bytes.size()}}};
    offset += static_cast<int64_t>(t.bytes.size());
  }
  const std::string text = header.dump();
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = text.size();
  out.write(reinterpret_cast<const char*>(&n), 8);  // little-endian on the machines we run on
  out << text;
  for (const RawTensor& t : tensors) out << t.bytes;
}

// An HF directory of `shards` files (with an index when more than one), tensors dealt
// round-robin so that neighbours land in different files.
void WriteHfDir(const fs::path& dir, const json& config, const std::vector<RawTensor>& tensors, int shards) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump(2);
  if (shards == 1) {
    WriteRaw(dir / "model.safetensors", tensors);
    return;
  }
  std::vector<std::vector<RawTensor>> files(static_cast<size_t>(shards));
  json weight_map = json::object();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t s = i % static_cast<size_t>(shards);
    files[s].push_back(tensors[i]);
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05d.safetensors", s + 1, shards);
    weight_map[tensors[i].name] = name;
  }
  for (size_t s = 0; s < files.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05d.safetensors", s + 1, shards);
    WriteRaw(dir / name, files[s]);
  }
  std::ofstream(dir / "model.safetensors.index.json") << json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump(2);
}

std::vector<RawTensor> RawState(model::DeepSeekV3Impl& m) {
  std::vector<RawTensor> out;
  for (const auto& [name, t] : model::ToHfStateDict(m)) out.push_back(Raw(name, t));
  return out;
}

json HfConfigOf(const config::Config& cfg) {
  const config::HfImportResult r = config::ExportHfConfig(cfg);
  EXPECT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].ToString());
  return r.config;
}

// The closest e4m3 byte to v (test-side quantizer: a search over every byte).
uint8_t ToE4m3(float v) {
  uint8_t best = 0;
  float best_err = INFINITY;
  for (int b = 0; b < 256; ++b) {
    const float x = ckpt::Fp8E4m3ToFloat(static_cast<uint8_t>(b));
    if (std::isnan(x)) continue;
    if (std::fabs(x - v) < best_err) {
      best_err = std::fabs(x - v);
      best = static_cast<uint8_t>(b);
    }
  }
  return best;
}

class HfWeightsTest : public ::testing::Test {
 protected:
  config::Config cfg_ = test::SmallModelConfig();
  test::TempDir dir_;

  model::DeepSeekV3 Model(uint64_t seed) {
    torch::manual_seed(seed);
    return model::DeepSeekV3(cfg_);
  }
};

TEST(Fp8, DecodesTheE4m3AndE5m2Encodings) {
  EXPECT_EQ(ckpt::Fp8E4m3ToFloat(0x38), 1.0f);
  EXPECT_EQ(ckpt::Fp8E4m3ToFloat(0xC0), -2.0f);
  EXPECT_EQ(ckpt::Fp8E4m3ToFloat(0x7E), 448.0f);  // the largest e4m3fn value
  EXPECT_EQ(ckpt::Fp8E4m3ToFloat(0x01), std::ldexp(1.0f, -9));  // the smallest subnormal
  EXPECT_EQ(ckpt::Fp8E4m3ToFloat(0x3C), 1.5f);
  EXPECT_TRUE(std::isnan(ckpt::Fp8E4m3ToFloat(0x7F)));
  EXPECT_TRUE(std::signbit(ckpt::Fp8E4m3ToFloat(0x80)));
  EXPECT_EQ(ckpt::Fp8E5m2ToFloat(0x3C), 1.0f);
  EXPECT_EQ(ckpt::Fp8E5m2ToFloat(0x7B), 57344.0f);
  EXPECT_TRUE(std::isinf(ckpt::Fp8E5m2ToFloat(0x7C)));
}

// Random weights quantized as DeepSeek-V3 stores them: per 128 x 128 block, scale_inv =
// amax / 448 and the e4m3 value of w / scale_inv. Loading gives e4m3 * scale_inv exactly.
TEST_F(HfWeightsTest, Fp8BlockScaledWeightsDequantizeOnLoad) {
  const int64_t rows = 200, cols = 300;  // blocks cut short at both edges
  torch::manual_seed(5);
  const torch::Tensor w = torch::randn({rows, cols}) * 0.02;
  const int64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
  torch::Tensor scale = torch::empty({br, bc});
  std::string q(static_cast<size_t>(rows * cols), '\0');
  torch::Tensor expected = torch::empty({rows, cols});
  for (int64_t i = 0; i < br; ++i) {
    for (int64_t j = 0; j < bc; ++j) {
      const torch::Tensor block = w.slice(0, i * 128, std::min(rows, (i + 1) * 128)).slice(1, j * 128, std::min(cols, (j + 1) * 128));
      scale[i][j] = block.abs().max().item<float>() / 448.0f;
    }
  }
  const float* wp = w.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  float* ep = expected.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float s = sp[(r / 128) * bc + c / 128];
      const uint8_t b = ToE4m3(wp[r * cols + c] / s);
      q[static_cast<size_t>(r * cols + c)] = static_cast<char>(b);
      ep[r * cols + c] = ckpt::Fp8E4m3ToFloat(b) * s;
    }
  }
  json config = {{"quantization_config", {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 128}}}}};
  WriteHfDir(dir_.path() / "fp8", config,
             {{"w", "F8_E4M3", {rows, cols}, q}, Raw("w_scale_inv", scale), Raw("norm", torch::ones({cols}))}, 1);
  ckpt::HfCheckpoint hf((dir_.path() / "fp8").string());
  EXPECT_EQ(hf.names(), (std::vector<std::string>{"norm", "w"}));  // the scales belong to w
  EXPECT_EQ(hf.dtype("w"), "F8_E4M3");
  const torch::Tensor loaded = hf.Read("w");
  EXPECT_TRUE(torch::equal(loaded, expected));
  // e4m3 keeps 3 mantissa bits: within 1/16 relative of the original (plus the subnormal floor).
  EXPECT_TRUE(torch::allclose(loaded, w, 1.0 / 16, 1e-6));
  EXPECT_EQ(hf.bytes_read(), rows * cols + br * bc * 4);

  // Wrong scale shapes and missing scales are refused, naming the tensor.
  WriteHfDir(dir_.path() / "bad_scale", config, {{"w", "F8_E4M3", {rows, cols}, q}, Raw("w_scale_inv", torch::ones({1, 1}))}, 1);
  try {
    ckpt::HfCheckpoint bad((dir_.path() / "bad_scale").string());
    ADD_FAILURE() << "wrong scale shape accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("w_scale_inv must be F32 of shape [2, 3]"), std::string::npos) << e.what();
  }
  WriteHfDir(dir_.path() / "no_scale", config, {{"w", "F8_E4M3", {rows, cols}, q}}, 1);
  EXPECT_THROW(
      {
        try {
          ckpt::HfCheckpoint bad((dir_.path() / "no_scale").string());
        } catch (const std::runtime_error& e) {
          EXPECT_NE(std::string(e.what()).find("w in "), std::string::npos) << e.what();
          EXPECT_NE(std::string(e.what()).find("without its block scales"), std::string::npos) << e.what();
          throw;
        }
      },
      std::runtime_error);
}

// Export (our HF names and config.json) then import: the same weights bit for bit and the
// same logits, whether the directory is one file or shards with an index.
TEST_F(HfWeightsTest, ExportThenImportIsExactFromOneFileOrShards) {
  model::DeepSeekV3 source = Model(1);
  const json config = HfConfigOf(cfg_);
  EXPECT_TRUE(config::CompareWithHfConfig(cfg_, config).empty());  // import inverts export
  const torch::Tensor tokens = torch::randint(0, cfg_.model.vocab_size, {2, 12}, torch::kLong);
  const torch::Tensor logits = source->Logits(tokens);
  for (int shards : {1, 3}) {
    const fs::path dir = dir_.path() / ("hf" + std::to_string(shards));
    WriteHfDir(dir, config, RawState(*source), shards);
    ckpt::HfCheckpoint hf(dir.string());
    model::DeepSeekV3 loaded = Model(2);
    const train::HfLoadReport r = train::LoadHfWeights(cfg_, {}, *loaded, hf);
    const auto a = source->named_parameters(), b = loaded->named_parameters();
    for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key() << " from " << shards;
    EXPECT_TRUE(torch::equal(loaded->Logits(tokens), logits)) << shards;
    // Every byte but the MTP layer's copies of the embedding and head was read.
    const std::string mtp = "model.layers." + std::to_string(cfg_.model.num_layers) + ".";
    EXPECT_EQ(r.bytes_read, r.total_bytes - hf.stored_bytes(mtp + "embed_tokens.weight") -
                                hf.stored_bytes(mtp + "shared_head.head.weight"));
    EXPECT_TRUE(r.skipped_mtp_layers.empty());
  }
}

// bf16 and fp16 files load as their values in fp32.
TEST_F(HfWeightsTest, HalfPrecisionWeightsLoadAsTheirValues) {
  model::DeepSeekV3 source = Model(3);
  std::vector<RawTensor> tensors;
  Named halves;
  bool bf16 = true;
  for (const auto& [name, t] : model::ToHfStateDict(*source)) {
    const torch::Tensor h = t.to(bf16 ? torch::kBFloat16 : torch::kHalf);
    tensors.push_back(Raw(name, h));
    halves.push_back({name, h});
    bf16 = !bf16;
  }
  WriteHfDir(dir_.path() / "half", HfConfigOf(cfg_), tensors, 2);
  ckpt::HfCheckpoint hf((dir_.path() / "half").string());
  model::DeepSeekV3 loaded = Model(4);
  train::LoadHfWeights(cfg_, {}, *loaded, hf);
  const auto want = model::ToHfStateDict(*loaded);
  for (size_t i = 0; i < want.size(); ++i) {
    // The MTP layer's embedding and head are the model's own (stored in the other dtype here).
    if (want[i].first.find("embed_tokens") != std::string::npos && want[i].first.rfind("model.layers.", 0) == 0) continue;
    if (want[i].first.find("shared_head.head") != std::string::npos) continue;
    EXPECT_TRUE(torch::equal(want[i].second, halves[i].second.to(torch::kFloat))) << want[i].first;
  }
}

// Under expert parallelism each rank reads its block of routed experts and nothing of the
// others'; a pipeline stage reads its layers. The bytes read are the bytes of what it keeps.
TEST_F(HfWeightsTest, EachRankReadsOnlyWhatItKeeps) {
  model::DeepSeekV3 source = Model(5);
  const fs::path dir = dir_.path() / "ep";
  WriteHfDir(dir, HfConfigOf(cfg_), RawState(*source), 2);
  const int64_t L = cfg_.model.num_layers, E = cfg_.model.moe.num_experts;
  const auto expert_of = [](const std::string& name) -> int64_t {
    const size_t at = name.find(".mlp.experts.");
    return at == std::string::npos ? -1 : std::stoll(name.substr(at + 13));
  };
  int64_t expert_bytes = 0;
  {
    ckpt::HfCheckpoint hf(dir.string());
    for (const std::string& n : hf.names()) {
      if (expert_of(n) >= 0) expert_bytes += hf.stored_bytes(n);
    }
  }
  ASSERT_GT(expert_bytes, 0);
  for (int64_t ep_index : {0, 1}) {
    ckpt::HfCheckpoint hf(dir.string());
    train::ModelShare share;
    share.ep = 2;
    share.ep_index = ep_index;
    model::DeepSeekV3 loaded = Model(6);
    const train::HfLoadReport r = train::LoadHfWeights(cfg_, share, *loaded, hf);
    int64_t others = 0;
    for (const std::string& n : hf.names()) {
      const int64_t e = expert_of(n);
      if (e >= 0 && e / (E / 2) != ep_index) others += hf.stored_bytes(n);
    }
    EXPECT_EQ(others, expert_bytes / 2);
    const std::string mtp = "model.layers." + std::to_string(L) + ".";
    const int64_t copies = hf.stored_bytes(mtp + "embed_tokens.weight") + hf.stored_bytes(mtp + "shared_head.head.weight");
    EXPECT_EQ(r.bytes_read, r.total_bytes - others - copies) << "ep rank " << ep_index;
    // Its own experts are the source's.
    const auto mine = model::ToHfStateDict(*loaded), theirs = model::ToHfStateDict(*source);
    for (size_t i = 0; i < mine.size(); ++i) {
      const int64_t e = expert_of(mine[i].first);
      if (e >= 0 && e / (E / 2) == ep_index) {
        EXPECT_TRUE(torch::equal(mine[i].second, theirs[i].second)) << mine[i].first;
      }
    }
  }
  // Two pipeline stages of one layer each: stage 0 reads the embedding and layer 0 only.
  config::Config two_stages = test::SmallModelConfig({{"distributed", {{"pipeline_parallel_size", 2}}}});
  ckpt::HfCheckpoint hf(dir.string());
  train::ModelShare first;
  first.pp = 2;
  model::DeepSeekV3 loaded = Model(7);
  const train::HfLoadReport r = train::LoadHfWeights(two_stages, first, *loaded, hf);
  int64_t kept = 0;
  for (const std::string& n : hf.names()) {
    if (n == "model.embed_tokens.weight" || n.rfind("model.layers.0.", 0) == 0) kept += hf.stored_bytes(n);
  }
  EXPECT_EQ(r.bytes_read, kept);
}

// A HF model with more MTP layers than the config uses: the extra layers are skipped and said.
TEST_F(HfWeightsTest, MtpLayersTheConfigDoesNotUseAreSkipped) {
  model::DeepSeekV3 source = Model(8);
  const fs::path dir = dir_.path() / "mtp";
  WriteHfDir(dir, HfConfigOf(cfg_), RawState(*source), 1);
  const config::Config no_mtp = test::SmallModelConfig({{"training", {{"use_mtp", false}}}});
  ckpt::HfCheckpoint hf(dir.string());
  torch::manual_seed(9);
  model::DeepSeekV3 loaded = model::DeepSeekV3(no_mtp);
  const train::HfLoadReport r = train::LoadHfWeights(no_mtp, {}, *loaded, hf);
  EXPECT_EQ(r.skipped_mtp_layers, std::vector<int64_t>{no_mtp.model.num_layers});
  // The other way round is a config error: the config predicts a token the weights cannot.
  const config::Config three = test::SmallModelConfig({{"training", {{"num_predict_tokens", 3}}}});
  const auto problems = config::CompareWithHfConfig(three, hf.config());
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].path, "/training/num_predict_tokens");
}

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

// Each broken directory is refused with the file and the tensor named, before any weight
// changes.
TEST_F(HfWeightsTest, BrokenDirectoriesNameTheFileAndTheTensor) {
  model::DeepSeekV3 source = Model(10);
  const json config = HfConfigOf(cfg_);
  const std::vector<RawTensor> tensors = RawState(*source);
  const auto load = [&](const fs::path& dir) {
    return ErrorOf([&] {
      ckpt::HfCheckpoint hf(dir.string());
      model::DeepSeekV3 m = Model(11);
      train::LoadHfWeights(cfg_, {}, *m, hf);
    });
  };
  const auto contains = [](const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
  };

  WriteHfDir(dir_.path() / "missing_shard", config, tensors, 3);
  fs::remove(dir_.path() / "missing_shard" / "model-00002-of-00003.safetensors");
  std::string e = load(dir_.path() / "missing_shard");
  EXPECT_TRUE(contains(e, "model-00002-of-00003.safetensors: cannot be opened")) << e;

  WriteHfDir(dir_.path() / "truncated", config, tensors, 2);
  const fs::path cut = dir_.path() / "truncated" / "model-00001-of-00002.safetensors";
  fs::resize_file(cut, fs::file_size(cut) - 100);
  e = load(dir_.path() / "truncated");
  EXPECT_TRUE(contains(e, cut.string() + ": not a valid safetensors file")) << e;

  std::vector<RawTensor> wrong = tensors;
  wrong[3] = Raw(wrong[3].name, torch::zeros(wrong[3].shape, torch::kInt));
  WriteHfDir(dir_.path() / "dtype", config, wrong, 1);
  e = load(dir_.path() / "dtype");
  EXPECT_TRUE(contains(e, "dtype of " + wrong[3].name + " in ")) << e;
  EXPECT_TRUE(contains(e, "I32, not a floating-point weight")) << e;

  std::vector<RawTensor> fewer(tensors.begin() + 1, tensors.end());
  std::vector<RawTensor> reshaped = tensors;
  reshaped[2] = Raw(reshaped[2].name, torch::zeros({3}));
  WriteHfDir(dir_.path() / "missing", config, fewer, 1);
  e = load(dir_.path() / "missing");
  EXPECT_TRUE(contains(e, "missing: " + tensors[0].name)) << e;
  WriteHfDir(dir_.path() / "shape", config, reshaped, 1);
  e = load(dir_.path() / "shape");
  EXPECT_TRUE(contains(e, "shape of " + tensors[2].name + " in ")) << e;

  json other = config;
  other["hidden_size"] = 64;
  other["rope_theta"] = 50000.0;
  WriteHfDir(dir_.path() / "config", other, tensors, 1);
  e = load(dir_.path() / "config");
  EXPECT_TRUE(contains(e, "/model/mla/d_model: 32 here, 64 in the HF config")) << e;
  EXPECT_TRUE(contains(e, "/model/mla/rope_theta")) << e;
  EXPECT_TRUE(contains(e, "dsv3ctl config import-hf " + (dir_.path() / "config" / "config.json").string())) << e;

  fs::create_directories(dir_.path() / "empty");
  std::ofstream(dir_.path() / "empty" / "config.json") << config.dump();
  e = load(dir_.path() / "empty");
  EXPECT_TRUE(contains(e, "holds neither model.safetensors nor model.safetensors.index.json")) << e;

  // A weight_map entry whose shard lacks it.
  WriteHfDir(dir_.path() / "index", config, tensors, 2);
  json index = json::parse(std::ifstream(dir_.path() / "index" / "model.safetensors.index.json"));
  index["weight_map"][tensors[0].name] = "model-00002-of-00002.safetensors";
  std::ofstream(dir_.path() / "index" / "model.safetensors.index.json") << index.dump();
  e = load(dir_.path() / "index");
  EXPECT_TRUE(contains(e, "model-00002-of-00002.safetensors: lacks tensor " + tensors[0].name)) << e;
}

}  // namespace
}  // namespace dsv3
