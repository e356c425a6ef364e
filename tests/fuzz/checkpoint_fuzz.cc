// libFuzzer target: the checkpoint readers' parsers under arbitrary bytes. The first byte
// picks the manifest parser or the safetensors header parser; either accepts with every
// invariant it promises, or throws std::runtime_error, never crashes.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "dsv3/ckpt/manifest.h"
#include "dsv3/ckpt/safetensors_header.h"

namespace {

void Manifest(const std::string& text) {
  const nlohmann::json m = dsv3::ckpt::ParseManifest(text, "fuzz");
  for (const auto& [name, info] : m["files"].items()) {
    if (name.find('/') != std::string::npos || name == ".." || name.empty()) __builtin_trap();
    (void)info["bytes"].get<uint64_t>();
    (void)info["crc32"].get<std::string>();
  }
}

void Safetensors(const std::string& bytes) {
  // The input is a whole file: prefix, header, data.
  const int64_t size = static_cast<int64_t>(bytes.size());
  const uint64_t length = dsv3::ckpt::SafetensorsHeaderLength(bytes, size);
  const auto h = dsv3::ckpt::ParseSafetensorsHeader(std::string_view(bytes).substr(8, length), size);
  for (const auto& e : h.entries) {
    if (e.begin < 0 || e.end < e.begin || h.data_start + e.end > size) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] & 1) {
      Manifest(rest);
    } else {
      Safetensors(rest);
    }
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).empty()) __builtin_trap();
  }
  return 0;
}
