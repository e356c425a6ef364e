// HF weights and generation, printed figures (never a test):
//   load: a shipped config's model written as a HF directory in fp32, bf16 and FP8 e4m3 with
//         128 x 128 block scales (two shards and an index), then read back into the model by
//         ckpt::HfCheckpoint + train::LoadHfWeights, warm (page cache) and cold (the files'
//         pages dropped with posix_fadvise), against a plain read() of the same files;
//   generate: greedy tokens/s through the MLA cache for nano and tiny (random weights).
// usage: hf_weights_bench [--config configs/train_config_tiny.json] [--dir /tmp/...] [--tokens 64]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dsv3/ckpt/hf_checkpoint.h"
#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"
#include "dsv3/common/hf_import.h"
#include "dsv3/model/hf_state_dict.h"
#include "dsv3/model/model.h"
#include "dsv3/train/hf_weights.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Stored {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// The nearest e4m3 byte of each value (positive codes sorted; sign apart).
std::string ToE4m3(const float* v, int64_t n) {
  static const std::vector<std::pair<float, uint8_t>> codes = [] {
    std::vector<std::pair<float, uint8_t>> c;
    for (int b = 0; b < 0x7F; ++b) c.push_back({dsv3::ckpt::Fp8E4m3ToFloat(static_cast<uint8_t>(b)), static_cast<uint8_t>(b)});
    return c;
  }();
  std::string out(static_cast<size_t>(n), '\0');
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::min(std::fabs(v[i]), 448.0f);
    auto it = std::lower_bound(codes.begin(), codes.end(), std::make_pair(a, uint8_t{0}));
    if (it == codes.end()) --it;
    if (it != codes.begin() && a - std::prev(it)->first < it->first - a) --it;
    out[static_cast<size_t>(i)] = static_cast<char>(it->second | (v[i] < 0 ? 0x80 : 0));
  }
  return out;
}

std::string Bytes(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

std::vector<Stored> Encode(const std::vector<std::pair<std::string, torch::Tensor>>& state, const std::string& dtype) {
  std::vector<Stored> out;
  for (const auto& [name, t] : state) {
    if (dtype == "F32" || t.dim() != 2) {
      out.push_back({name, "F32", t.sizes().vec(), Bytes(t.to(torch::kFloat))});
    } else if (dtype == "BF16") {
      out.push_back({name, "BF16", t.sizes().vec(), Bytes(t.to(torch::kBFloat16))});
    } else {  // FP8 e4m3 with 128 x 128 block scales, as DeepSeek-V3 ships
      const int64_t rows = t.size(0), cols = t.size(1), br = (rows + 127) / 128, bc = (cols + 127) / 128;
      torch::Tensor scale = torch::empty({br, bc});
      torch::Tensor scaled = t.to(torch::kFloat).clone();
      for (int64_t i = 0; i < br; ++i) {
        for (int64_t j = 0; j < bc; ++j) {
          torch::Tensor block = scaled.slice(0, i * 128, std::min(rows, (i + 1) * 128)).slice(1, j * 128, std::min(cols, (j + 1) * 128));
          const float s = std::max(block.abs().max().item<float>(), 1e-12f) / 448.0f;
          scale[i][j] = s;
          block.div_(s);
        }
      }
      out.push_back({name, "F8_E4M3", t.sizes().vec(), ToE4m3(scaled.data_ptr<float>(), scaled.numel())});
      out.push_back({name + "_scale_inv", "F32", scale.sizes().vec(), Bytes(scale)});
    }
  }
  return out;
}

void WriteShard(const fs::path& path, const std::vector<const Stored*>& tensors) {
  json header = json::object();
  int64_t offset = 0;
  for (const Stored* t : tensors) {
    header[t->name] = {{"dtype", t->dtype}, {"shape", t->shape}, {"data_offsets", {offset, offset + (int64_t)t->bytes.size()}}};
    offset += static_cast<int64_t>(t->bytes.size());
  }
  const std::string text = header.dump();
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = text.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << text;
  for (const Stored* t : tensors) out << t->bytes;
}

// Two shards (tensors dealt alternately, scales with their weights) and the index.
std::vector<fs::path> WriteHfDir(const fs::path& dir, const json& config, const std::vector<Stored>& tensors) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump(2);
  std::vector<const Stored*> shards[2];
  json weight_map = json::object();
  int k = 0;
  for (const Stored& t : tensors) {
    const bool scale = t.name.size() > 10 && t.name.compare(t.name.size() - 10, 10, "_scale_inv") == 0;
    if (!scale) k ^= 1;
    shards[k].push_back(&t);
    weight_map[t.name] = "model-0000" + std::to_string(k + 1) + "-of-00002.safetensors";
  }
  std::vector<fs::path> files;
  for (int s = 0; s < 2; ++s) {
    files.push_back(dir / ("model-0000" + std::to_string(s + 1) + "-of-00002.safetensors"));
    WriteShard(files.back(), shards[s]);
  }
  std::ofstream(dir / "model.safetensors.index.json") << json{{"weight_map", weight_map}}.dump();
  return files;
}

void DropFromPageCache(const std::vector<fs::path>& files) {
  for (const fs::path& f : files) {
    const int fd = open(f.c_str(), O_RDONLY);
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

double RawRead(const std::vector<fs::path>& files) {
  std::vector<char> buf(8 << 20);
  const auto t0 = Clock::now();
  for (const fs::path& f : files) {
    const int fd = open(f.c_str(), O_RDONLY);
    while (read(fd, buf.data(), buf.size()) > 0) {
    }
    close(fd);
  }
  return Seconds(t0);
}

dsv3::config::Config LoadConfig(const std::string& path) {
  const auto r = dsv3::config::LoadConfigFile(path);
  if (!r.ok()) throw std::runtime_error(path + ": " + r.errors[0].ToString());
  return r.config;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "configs/train_config_tiny.json", dir = "/tmp/dsv3_hf_weights_bench";
  int64_t tokens = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--config") config_path = argv[i + 1];
    else if (a == "--dir") dir = argv[i + 1];
    else if (a == "--tokens") tokens = std::atoll(argv[i + 1]);
  }
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  const dsv3::config::Config cfg = LoadConfig(config_path);
  torch::manual_seed(1);
  dsv3::model::DeepSeekV3 source(cfg);
  const auto state = dsv3::model::ToHfStateDict(*source);
  const json hf_config = dsv3::config::ExportHfConfig(cfg).config;
  std::printf("%s: %.1fM parameters; %d threads\n", config_path.c_str(),
              static_cast<double>(dsv3::config::EstimateConfig(cfg).params.total) / 1e6, torch::get_num_threads());
  std::printf("%-8s %10s %12s %12s %12s %12s\n", "dtype", "MiB", "read warm", "load warm", "read cold", "load cold");
  for (const char* dtype : {"F32", "BF16", "F8_E4M3"}) {
    const fs::path d = fs::path(dir) / dtype;
    fs::remove_all(d);
    const std::vector<fs::path> files = WriteHfDir(d, hf_config, Encode(state, dtype));
    double bytes = 0;
    for (const auto& f : files) bytes += static_cast<double>(fs::file_size(f));
    const auto load = [&] {
      const auto t0 = Clock::now();
      dsv3::ckpt::HfCheckpoint hf(d.string());
      dsv3::train::LoadHfWeights(cfg, {}, *source, hf);
      return Seconds(t0);
    };
    DropFromPageCache(files);  // written back, so that every run below maps clean pages
    RawRead(files);            // warm the page cache
    const double read_warm = RawRead(files), load_warm = std::min(load(), load());
    DropFromPageCache(files);
    const double read_cold = RawRead(files);
    DropFromPageCache(files);
    const double load_cold = load();
    const auto gbs = [&](double s) { return bytes / s / 1e9; };
    std::printf("%-8s %10.1f %9.2f GB/s %7.2f GB/s %7.2f GB/s %7.2f GB/s\n", dtype, bytes / 1048576.0,
                gbs(read_warm), gbs(load_warm), gbs(read_cold), gbs(load_cold));
    if (std::getenv("DSV3_BENCH_KEEP") == nullptr) fs::remove_all(d);
  }
  for (const char* path : {"configs/train_config_nano.json", config_path.c_str()}) {
    const dsv3::config::Config c = LoadConfig(path);
    torch::manual_seed(2);
    dsv3::model::DeepSeekV3 m(c);
    m->eval();
    dsv3::model::SamplingOptions greedy;
    m->Generate({1, 2, 3, 4}, 4, greedy);  // warm-up
    const auto t0 = Clock::now();
    const auto out = m->Generate({1, 2, 3, 4, 5, 6, 7, 8}, tokens, greedy);
    std::printf("generate %s: %zu tokens greedy through the MLA cache, %.1f tokens/s\n", path, out.size(),
                static_cast<double>(out.size()) / Seconds(t0));
  }
  return 0;
}
