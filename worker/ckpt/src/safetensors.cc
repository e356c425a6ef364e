#include "dsv3/ckpt/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "dsv3/ckpt/safetensors_header.h"

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
  SafetensorsHeader header;
  try {
    std::string prefix(8, '\0');
    in.read(prefix.data(), size >= 8 ? 8 : 0);
    std::string text(SafetensorsHeaderLength(prefix, size), '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    header = ParseSafetensorsHeader(text, size);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  SafetensorsFile out;
  out.metadata = header.metadata;
  for (const SafetensorsEntry& e : header.entries) {
    const auto dtype = Dtypes().find(e.dtype);
    if (dtype == Dtypes().end()) throw std::runtime_error(path + ": entry " + e.name + " has unsupported dtype " + e.dtype);
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(dtype->second));
    in.seekg(header.data_start + e.begin);
    in.read(static_cast<char*>(t.data_ptr()), e.end - e.begin);
    if (!in) throw std::runtime_error(path + ": not a valid safetensors file: entry " + e.name + " is cut short");
    out.tensors[e.name] = t;
  }
  return out;
}

}  // namespace dsv3::ckpt
