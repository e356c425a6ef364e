// A HuggingFace model directory's weights, read one tensor at a time: `config.json`, and
// either `model.safetensors` or shards `model-0000i-of-0000n.safetensors` listed by
// `model.safetensors.index.json` (its "weight_map": tensor name -> shard file). Every file
// is memory-mapped and only its header parsed when the directory is opened; a tensor's
// bytes are copied out of the mapping (and dropped from the page tables again) when it is
// read, so a rank that reads only what it holds never maps the rest into memory.
//
// Weights in F32, F64, BF16 and F16 are converted to fp32. FP8 weights (F8_E4M3, as in
// DeepSeek-V3's released checkpoints, or F8_E5M2) are dequantized with their block scales:
// `<name>_scale_inv` (F32, ceil(rows / 128) x ceil(cols / 128) for 128 x 128 blocks, or
// the `quantization_config.weight_block_size` of config.json) multiplies each block, the
// way DeepSeek's fp8_cast_bf16.py does. The scale tensors are consumed by their weights and
// not listed as tensors of their own.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dsv3/ckpt/safetensors_header.h"

namespace dsv3::ckpt {

// fp32 value of each FP8 byte (e4m3fn: bias 7, no infinities, 0x7F/0xFF are NaN; e5m2:
// the top byte of an IEEE half). Exposed for tests.
float Fp8E4m3ToFloat(uint8_t byte);
float Fp8E5m2ToFloat(uint8_t byte);

class HfCheckpoint {
 public:
  // Opens `dir`: reads config.json, the index (if any), and every shard's header. Throws
  // std::runtime_error naming the file and what is wrong with it (missing shard, truncated
  // file, bad header, a weight_map entry its shard lacks, an FP8 weight without scales).
  explicit HfCheckpoint(const std::string& dir);
  ~HfCheckpoint();
  HfCheckpoint(const HfCheckpoint&) = delete;
  HfCheckpoint& operator=(const HfCheckpoint&) = delete;

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }
  // Weight tensors by name (scales excluded), sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
  const std::vector<int64_t>& shape(const std::string& name) const;
  const std::string& dtype(const std::string& name) const;  // as stored: "BF16", "F8_E4M3", ...
  // The file (a path inside dir) that holds `name`.
  std::string file_of(const std::string& name) const;
  // Bytes the tensor (and its scales) occupy in the files.
  int64_t stored_bytes(const std::string& name) const;

  // Reads `name` as a contiguous fp32 CPU tensor, dequantized. Throws naming the tensor and
  // its file when it is absent or of a dtype that is not a floating-point weight.
  torch::Tensor Read(const std::string& name);
  // The same into `target` (of its shape, any dtype and device); straight from the mapping
  // when it is a contiguous fp32 CPU tensor (a parameter, or a view of one expert's rows).
  void ReadInto(const std::string& name, torch::Tensor target);

  // Bytes copied out of the files so far (weights and scales), and the total they hold.
  int64_t bytes_read() const { return bytes_read_; }
  int64_t total_bytes() const;

 private:
  struct Shard;
  struct Stored {
    Shard* shard = nullptr;
    SafetensorsEntry entry;
  };
  struct Location {
    Stored weight;
    std::optional<Stored> scale;  // FP8 weights: their block scales (in any shard)
  };
  const Location& Find(const std::string& name) const;
  Shard& OpenShard(const std::string& file);
  // `s`'s bytes in the mapping, its pages mapped in (and counted as read); Unmap drops them
  // from this process again.
  const char* Map(const Stored& s);
  void Unmap(const Stored& s);

  std::string dir_;
  nlohmann::json config_;
  std::vector<int64_t> block_{128, 128};
  std::map<std::string, std::unique_ptr<Shard>> shards_;  // by file name
  std::map<std::string, Location> tensors_;
  int64_t bytes_read_ = 0;
};

}  // namespace dsv3::ckpt
