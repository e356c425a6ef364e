// The safetensors header without LibTorch: the 8-byte little-endian length and the JSON
// header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, checked against the
// file's size. The LibTorch reader (safetensors.h) reads tensors only after this passed;
// the fuzz target feeds it arbitrary bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::ckpt {

struct SafetensorsEntry {
  std::string name, dtype;      // dtype: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, and the
                                // FP8 formats F8_E4M3 and F8_E5M2 (read by hf_checkpoint.h only)
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;   // byte range within the data section
};

struct SafetensorsHeader {
  int64_t data_start = 0;       // file offset of the data section
  std::vector<SafetensorsEntry> entries;  // in header order
  std::map<std::string, std::string> metadata;
};

// Bytes per element of a dtype name; 0 for names this build does not support.
int64_t SafetensorsElementSize(const std::string& dtype);

// The length prefix of a file whose first bytes are `prefix` (at least 8 of them), checked
// against `file_size` and a 100 MiB cap. Throws std::runtime_error("...: why").
uint64_t SafetensorsHeaderLength(std::string_view prefix, int64_t file_size);

// Parses the JSON header `text` of a file of `file_size` bytes: every entry has a supported
// dtype, a shape of at most 2^40 elements, and offsets that match its shape, lie inside the
// data section and overlap no other entry. Throws std::runtime_error saying which entry is
// wrong and how.
SafetensorsHeader ParseSafetensorsHeader(std::string_view text, int64_t file_size);

}  // namespace dsv3::ckpt
