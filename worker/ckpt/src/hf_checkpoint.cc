#include "dsv3/ckpt/hf_checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>

#include <ATen/Parallel.h>

namespace dsv3::ckpt {

namespace fs = std::filesystem;
using nlohmann::json;

float Fp8E4m3ToFloat(uint8_t byte) {
  const int sign = byte >> 7, exponent = (byte >> 3) & 0xF, mantissa = byte & 0x7;
  float v;
  if (exponent == 0xF && mantissa == 0x7) {
    v = std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa) / 8.0f, -6);  // subnormal
  } else {
    v = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
  }
  return sign ? -v : v;
}

float Fp8E5m2ToFloat(uint8_t byte) {
  const int sign = byte >> 7, exponent = (byte >> 2) & 0x1F, mantissa = byte & 0x3;
  float v;
  if (exponent == 0x1F) {
    v = mantissa == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa) / 4.0f, -14);
  } else {
    v = std::ldexp(1.0f + static_cast<float>(mantissa) / 4.0f, exponent - 15);
  }
  return sign ? -v : v;
}

namespace {

const std::array<float, 256>& Fp8Table(const std::string& dtype) {
  static const auto make = [](float (*decode)(uint8_t)) {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) t[static_cast<size_t>(b)] = decode(static_cast<uint8_t>(b));
    return t;
  };
  static const std::array<float, 256> e4m3 = make(Fp8E4m3ToFloat), e5m2 = make(Fp8E5m2ToFloat);
  return dtype == "F8_E4M3" ? e4m3 : e5m2;
}

bool IsFp8(const std::string& dtype) { return dtype == "F8_E4M3" || dtype == "F8_E5M2"; }

// The floating-point dtypes a weight may be stored in, besides FP8.
const std::map<std::string, torch::ScalarType>& FloatDtypes() {
  static const std::map<std::string, torch::ScalarType> kTypes = {
      {"F32", torch::kFloat}, {"F64", torch::kDouble}, {"BF16", torch::kBFloat16}, {"F16", torch::kHalf}};
  return kTypes;
}

constexpr const char* kScaleSuffix = "_scale_inv";

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

json ReadJsonFile(const fs::path& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot be opened (" + what + ")");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error(path.string() + ": is not valid JSON: " + e.what());
  }
}

}  // namespace

// One mapped safetensors file.
struct HfCheckpoint::Shard {
  std::string path;
  int fd = -1;
  int64_t size = 0;
  const char* data = nullptr;  // the whole file, mapped read-only
  SafetensorsHeader header;
  std::map<std::string, size_t> by_name;  // header.entries' indices

  ~Shard() {
    if (data != nullptr) munmap(const_cast<char*>(data), static_cast<size_t>(size));
    if (fd >= 0) close(fd);
  }
};

HfCheckpoint::HfCheckpoint(const std::string& dir) : dir_(dir) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) throw std::runtime_error(dir + ": is not a directory (an HF model directory)");
  config_ = ReadJsonFile(root / "config.json", "every HF model directory has one");
  if (!config_.is_object()) throw std::runtime_error((root / "config.json").string() + ": is not a JSON object");
  if (const auto q = config_.find("quantization_config"); q != config_.end() && q->is_object()) {
    const auto size = q->find("weight_block_size");
    if (size != q->end()) {
      if (!size->is_array() || size->size() != 2 || !(*size)[0].is_number_unsigned() ||
          !(*size)[1].is_number_unsigned() || (*size)[0].get<int64_t>() < 1 || (*size)[1].get<int64_t>() < 1) {
        throw std::runtime_error((root / "config.json").string() +
                                 ": quantization_config.weight_block_size must be two positive integers, got " +
                                 size->dump());
      }
      block_ = {(*size)[0].get<int64_t>(), (*size)[1].get<int64_t>()};
    }
  }

  // name -> file, from the index or the one file's header.
  std::map<std::string, std::string> where;
  const fs::path index = root / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const json j = ReadJsonFile(index, "the shard index");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw std::runtime_error(index.string() + ": has no \"weight_map\" object (tensor name -> shard file)");
    }
    for (const auto& [name, file] : j["weight_map"].items()) {
      const std::string f = file.is_string() ? file.get<std::string>() : "";
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
        throw std::runtime_error(index.string() + ": weight_map[\"" + name + "\"] is " + file.dump() +
                                 ", not a file name in " + dir);
      }
      where[name] = f;
    }
    for (const auto& [name, f] : where) OpenShard(f);
  } else if (fs::exists(root / "model.safetensors")) {
    Shard& s = OpenShard("model.safetensors");
    for (const SafetensorsEntry& e : s.header.entries) where[e.name] = "model.safetensors";
  } else {
    throw std::runtime_error(dir + ": holds neither model.safetensors nor model.safetensors.index.json");
  }

  std::map<std::string, Stored> stored;
  for (const auto& [name, file] : where) {
    Shard& s = *shards_.at(file);
    const auto found = s.by_name.find(name);
    if (found == s.by_name.end()) {
      throw std::runtime_error(s.path + ": lacks tensor " + name + ", which model.safetensors.index.json places there");
    }
    stored[name] = Stored{&s, s.header.entries[found->second]};
  }
  for (const auto& [name, s] : stored) {
    if (EndsWith(name, kScaleSuffix)) {
      const std::string weight = name.substr(0, name.size() - std::string(kScaleSuffix).size());
      if (stored.count(weight) == 0) throw std::runtime_error(s.shard->path + ": " + name + " scales no tensor " + weight);
      continue;
    }
    Location loc{s, std::nullopt};
    if (const auto scale = stored.find(name + kScaleSuffix); scale != stored.end()) loc.scale = scale->second;
    if (IsFp8(s.entry.dtype)) {
      const std::string at = name + " in " + s.shard->path;
      if (!loc.scale) throw std::runtime_error(at + " is " + s.entry.dtype + " without its block scales " + name + kScaleSuffix);
      if (s.entry.shape.size() != 2) throw std::runtime_error(at + " is an FP8 tensor that is not 2-D");
      const std::vector<int64_t> want = {(s.entry.shape[0] + block_[0] - 1) / block_[0],
                                         (s.entry.shape[1] + block_[1] - 1) / block_[1]};
      if (loc.scale->entry.dtype != "F32" || loc.scale->entry.shape != want) {
        throw std::runtime_error(at + ": its scales " + name + kScaleSuffix + " must be F32 of shape [" +
                                 std::to_string(want[0]) + ", " + std::to_string(want[1]) + "] for " +
                                 std::to_string(block_[0]) + " x " + std::to_string(block_[1]) + " blocks, got " +
                                 loc.scale->entry.dtype + " " + json(loc.scale->entry.shape).dump());
      }
    }
    tensors_[name] = loc;
  }
}

HfCheckpoint::~HfCheckpoint() = default;

HfCheckpoint::Shard& HfCheckpoint::OpenShard(const std::string& file) {
  if (const auto it = shards_.find(file); it != shards_.end()) return *it->second;
  auto s = std::make_unique<Shard>();
  s->path = (fs::path(dir_) / file).string();
  s->fd = open(s->path.c_str(), O_RDONLY | O_CLOEXEC);
  if (s->fd < 0) throw std::runtime_error(s->path + ": cannot be opened: " + std::strerror(errno));
  struct stat st {};
  if (fstat(s->fd, &st) != 0) throw std::runtime_error(s->path + ": cannot stat: " + std::strerror(errno));
  s->size = st.st_size;
  if (s->size > 0) {
    void* p = mmap(nullptr, static_cast<size_t>(s->size), PROT_READ, MAP_SHARED, s->fd, 0);
    if (p == MAP_FAILED) throw std::runtime_error(s->path + ": cannot be mapped: " + std::strerror(errno));
    s->data = static_cast<const char*>(p);
  }
  try {
    const std::string_view bytes(s->data == nullptr ? "" : s->data, static_cast<size_t>(s->size));
    const uint64_t n = SafetensorsHeaderLength(bytes.substr(0, 8), s->size);
    s->header = ParseSafetensorsHeader(bytes.substr(8, n), s->size);
    for (size_t i = 0; i < s->header.entries.size(); ++i) s->by_name[s->header.entries[i].name] = i;
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(s->path + ": " + e.what());
  }
  Shard& out = *s;
  shards_[file] = std::move(s);
  return out;
}

std::vector<std::string> HfCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, loc] : tensors_) out.push_back(name);
  return out;
}

const HfCheckpoint::Location& HfCheckpoint::Find(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error(dir_ + ": has no tensor " + name);
  return it->second;
}

const std::vector<int64_t>& HfCheckpoint::shape(const std::string& name) const { return Find(name).weight.entry.shape; }
const std::string& HfCheckpoint::dtype(const std::string& name) const { return Find(name).weight.entry.dtype; }
std::string HfCheckpoint::file_of(const std::string& name) const { return Find(name).weight.shard->path; }

int64_t HfCheckpoint::stored_bytes(const std::string& name) const {
  const Location& loc = Find(name);
  int64_t n = loc.weight.entry.end - loc.weight.entry.begin;
  if (loc.scale) n += loc.scale->entry.end - loc.scale->entry.begin;
  return n;
}

int64_t HfCheckpoint::total_bytes() const {
  int64_t n = 0;
  for (const auto& [file, s] : shards_) {
    for (const SafetensorsEntry& e : s->header.entries) n += e.end - e.begin;
  }
  return n;
}

const char* HfCheckpoint::Map(const Stored& s) {
  const int64_t begin = s.shard->header.data_start + s.entry.begin, bytes = s.entry.end - s.entry.begin;
  if (bytes > 0) {
#ifdef MADV_POPULATE_READ
    // One call maps the range's pages (Linux 5.14+), instead of a page fault every few pages;
    // where the kernel lacks it, the copy faults them in.
    const int64_t page = sysconf(_SC_PAGESIZE), first = begin / page * page;
    madvise(const_cast<char*>(s.shard->data) + first, static_cast<size_t>(begin + bytes - first), MADV_POPULATE_READ);
#endif
  }
  bytes_read_ += bytes;
  return s.shard->data + begin;
}

void HfCheckpoint::Unmap(const Stored& s) {
  // The copy is all this process keeps: unmap the pages it touched (the page cache keeps them).
  const int64_t begin = s.shard->header.data_start + s.entry.begin, bytes = s.entry.end - s.entry.begin;
  if (bytes == 0) return;
  const int64_t page = sysconf(_SC_PAGESIZE), first = begin / page * page;
  madvise(const_cast<char*>(s.shard->data) + first, static_cast<size_t>(begin + bytes - first), MADV_DONTNEED);
}

torch::Tensor HfCheckpoint::Read(const std::string& name) {
  torch::Tensor out = torch::empty(Find(name).weight.entry.shape, torch::kFloat);
  ReadInto(name, out);
  return out;
}

void HfCheckpoint::ReadInto(const std::string& name, torch::Tensor target) {
  const Location& loc = Find(name);
  const SafetensorsEntry& e = loc.weight.entry;
  const std::string at = name + " in " + loc.weight.shard->path;
  if (target.sizes().vec() != e.shape) throw std::runtime_error(at + ": its shape does not match the destination");
  const bool direct = target.device().is_cpu() && target.scalar_type() == torch::kFloat && target.is_contiguous();
  if (!direct) {  // dequantize on the host, then one copy to the device or dtype
    target.copy_(Read(name));
    return;
  }
  torch::NoGradGuard no_grad;
  if (IsFp8(e.dtype)) {
    torch::Tensor scale = torch::empty(loc.scale->entry.shape, torch::kFloat);
    std::memcpy(scale.data_ptr(), Map(*loc.scale), static_cast<size_t>(loc.scale->entry.end - loc.scale->entry.begin));
    Unmap(*loc.scale);
    const auto* in = reinterpret_cast<const uint8_t*>(Map(loc.weight));
    const std::array<float, 256>& table = Fp8Table(e.dtype);
    const int64_t rows = e.shape[0], cols = e.shape[1], scale_cols = scale.size(1), b0 = block_[0], b1 = block_[1];
    const float* s = scale.data_ptr<float>();
    float* o = target.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* srow = s + (r / b0) * scale_cols;
        const uint8_t* irow = in + r * cols;
        float* orow = o + r * cols;
        for (int64_t c0 = 0; c0 < cols; c0 += b1) {  // one scale per block of columns
          const float scale_of_block = srow[c0 / b1];
          for (int64_t c = c0, c1 = std::min(cols, c0 + b1); c < c1; ++c) orow[c] = table[irow[c]] * scale_of_block;
        }
      }
    });
    Unmap(loc.weight);
    return;
  }
  const auto type = FloatDtypes().find(e.dtype);
  if (type == FloatDtypes().end()) {
    throw std::runtime_error(at + " has dtype " + e.dtype +
                             ", not a floating-point weight (F32, F64, BF16, F16, F8_E4M3, F8_E5M2)");
  }
  if (loc.scale) {  // a scaled non-FP8 weight (e.g. a bf16 cast that kept the scales) is refused, not guessed at
    throw std::runtime_error(at + " is " + e.dtype + " but has block scales " + name + kScaleSuffix +
                             "; only FP8 weights are block-scaled");
  }
  // Converted straight from the mapping into the destination: no intermediate copy.
  const torch::Tensor stored =
      torch::from_blob(const_cast<char*>(Map(loc.weight)), e.shape, torch::TensorOptions().dtype(type->second));
  target.copy_(stored);
  Unmap(loc.weight);
}

}  // namespace dsv3::ckpt
