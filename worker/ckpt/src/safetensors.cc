#include "dsv3/ckpt/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace dsv3::ckpt {
namespace {

using nlohmann::json;

const std::map<std::string, torch::ScalarType>& Dtypes() {
  static const std::map<std::string, torch::ScalarType> kDtypes = {
      {"F64", torch::kDouble}, {"F32", torch::kFloat}, {"F16", torch::kHalf},  {"BF16", torch::kBFloat16},
      {"I64", torch::kLong},   {"I32", torch::kInt},   {"I16", torch::kShort}, {"I8", torch::kChar},
      {"U8", torch::kByte},    {"BOOL", torch::kBool}};
  return kDtypes;
}

std::string DtypeName(torch::ScalarType t) {
  for (const auto& [name, type] : Dtypes())
    if (type == t) return name;
  throw std::runtime_error(std::string("safetensors: unsupported dtype ") + c10::toString(t));
}

void WriteAll(int fd, const char* data, size_t bytes, const std::string& path) {
  while (bytes > 0) {
    const ssize_t n = write(fd, data, bytes);
    if (n < 0) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
    data += n;
    bytes -= static_cast<size_t>(n);
  }
}

}  // namespace

void WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> cpu;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const int64_t bytes = static_cast<int64_t>(c.numel() * c.element_size());
    header[name] = {{"dtype", DtypeName(c.scalar_type())}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    cpu.push_back(std::move(c));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
  try {
    uint64_t n = text.size();
    char prefix[8];
    for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xFF);  // little-endian
    WriteAll(fd, prefix, 8, path);
    WriteAll(fd, text.data(), text.size(), path);
    for (const auto& c : cpu) WriteAll(fd, static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size(), path);
    if (fsync(fd) != 0) throw std::runtime_error("cannot flush " + path);
  } catch (...) {
    close(fd);
    throw;
  }
  close(fd);
}

SafetensorsFile ReadSafetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path + ": cannot be opened");
  const int64_t size = in.tellg();
  in.seekg(0);
  const auto bad = [&](const std::string& why) { return std::runtime_error(path + ": not a valid safetensors file: " + why); };
  if (size < 8) throw bad("shorter than its 8-byte header length");
  unsigned char prefix[8];
  in.read(reinterpret_cast<char*>(prefix), 8);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | prefix[i];
  if (header_size > static_cast<uint64_t>(size - 8) || header_size > (100u << 20)) throw bad("header length out of range");
  std::string text(header_size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_size));
  const json header = json::parse(text, nullptr, false);
  if (header.is_discarded() || !header.is_object()) throw bad("header is not a JSON object");
  const int64_t data_start = 8 + static_cast<int64_t>(header_size), data_size = size - data_start;
  SafetensorsFile out;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw bad("__metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) throw bad("metadata value of " + k + " is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets") ||
        !entry["dtype"].is_string() || !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      throw bad("entry " + name + " lacks dtype, shape or data_offsets");
    }
    const auto dtype = Dtypes().find(entry["dtype"].get<std::string>());
    if (dtype == Dtypes().end()) throw bad("entry " + name + " has unsupported dtype " + entry["dtype"].dump());
    std::vector<int64_t> shape;
    int64_t numel = 1;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned() || d.get<int64_t>() > (int64_t{1} << 40)) throw bad("entry " + name + " has a bad shape");
      shape.push_back(d.get<int64_t>());
      numel *= shape.back();
      if (numel > (int64_t{1} << 40)) throw bad("entry " + name + " is too large");
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) throw bad("entry " + name + " has bad offsets");
    const int64_t begin = offsets[0].get<int64_t>(), end = offsets[1].get<int64_t>();
    const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype->second));
    if (begin < 0 || end < begin || end > data_size || end - begin != bytes) {
      throw bad("entry " + name + " has offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                ") that do not fit its shape or the file");
    }
    ranges.push_back({begin, end});
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype->second));
    in.seekg(data_start + begin);
    in.read(static_cast<char*>(t.data_ptr()), bytes);
    if (!in) throw bad("entry " + name + " is cut short");
    out.tensors[name] = t;
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) throw bad("tensors overlap");
  }
  return out;
}

}  // namespace dsv3::ckpt
