// The safetensors format (what HF transformers loads): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then
// the tensors' bytes back to back.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace dsv3::ckpt {

// Writes tensors (any device; copied to CPU) in the given order, then fsyncs the file.
// Throws std::runtime_error on I/O errors or unsupported dtypes.
void WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  std::map<std::string, torch::Tensor> tensors;  // CPU tensors owning their memory
  std::map<std::string, std::string> metadata;
};

// Reads and validates a file (header size, offsets in bounds and matching the shapes, no
// overlaps). Throws std::runtime_error naming the file and the problem.
SafetensorsFile ReadSafetensors(const std::string& path);

}  // namespace dsv3::ckpt
