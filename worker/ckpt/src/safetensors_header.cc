#include "dsv3/ckpt/safetensors_header.h"

#include <algorithm>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace dsv3::ckpt {

namespace {

using nlohmann::json;
constexpr int64_t kMaxElements = int64_t{1} << 40;
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

std::runtime_error Bad(const std::string& why) { return std::runtime_error("not a valid safetensors file: " + why); }

}  // namespace

int64_t SafetensorsElementSize(const std::string& dtype) {
  static const std::map<std::string, int64_t> kSizes = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
                                                        {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1},
                                                        {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  const auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

uint64_t SafetensorsHeaderLength(std::string_view prefix, int64_t file_size) {
  if (prefix.size() < 8 || file_size < 8) throw Bad("shorter than its 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(prefix[static_cast<size_t>(i)]);
  if (n > static_cast<uint64_t>(file_size - 8) || n > kMaxHeaderBytes) throw Bad("header length out of range");
  return n;
}

SafetensorsHeader ParseSafetensorsHeader(std::string_view text, int64_t file_size) {
  const json header = json::parse(text.begin(), text.end(), nullptr, false);
  if (header.is_discarded() || !header.is_object()) throw Bad("header is not a JSON object");
  SafetensorsHeader out;
  out.data_start = 8 + static_cast<int64_t>(text.size());
  const int64_t data_size = file_size - out.data_start;
  if (data_size < 0) throw Bad("header longer than the file");
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw Bad("__metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) throw Bad("metadata value of " + k + " is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets") ||
        !entry["dtype"].is_string() || !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      throw Bad("entry " + name + " lacks dtype, shape or data_offsets");
    }
    SafetensorsEntry e;
    e.name = name;
    e.dtype = entry["dtype"].get<std::string>();
    const int64_t element = SafetensorsElementSize(e.dtype);
    if (element == 0) throw Bad("entry " + name + " has unsupported dtype " + entry["dtype"].dump());
    int64_t numel = 1;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(kMaxElements)) {
        throw Bad("entry " + name + " has a bad shape");
      }
      e.shape.push_back(d.get<int64_t>());
      // Both factors are <= 2^40 and the product so far too, so this cannot overflow.
      numel = e.shape.back() == 0 ? 0 : numel * e.shape.back();
      if (numel > kMaxElements) throw Bad("entry " + name + " is too large");
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned() ||
        offsets[0].get<uint64_t>() > static_cast<uint64_t>(data_size) ||
        offsets[1].get<uint64_t>() > static_cast<uint64_t>(data_size)) {
      throw Bad("entry " + name + " has offsets " + offsets.dump() + " that do not fit its shape or the file (" +
                std::to_string(data_size) + " data bytes)");
    }
    e.begin = offsets[0].get<int64_t>();
    e.end = offsets[1].get<int64_t>();
    if (e.end < e.begin || e.end - e.begin != numel * element) {
      throw Bad("entry " + name + " has offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                ") that do not fit its shape or the file");
    }
    ranges.push_back({e.begin, e.end});
    out.entries.push_back(std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) throw Bad("tensors overlap");
  }
  return out;
}

}  // namespace dsv3::ckpt
