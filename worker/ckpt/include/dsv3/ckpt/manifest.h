// Checkpoint manifests without LibTorch: path resolution and checksum verification, shared
// by the trainer (dsv3_ckpt) and dsv3ctl (export-hf), which must stay LibTorch-free.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace dsv3::ckpt {

inline constexpr const char* kCheckpointFormat = "dsv3-checkpoint/1";

// A checkpoint directory from the directory itself, its manifest.json, or the guide's
// `checkpoint_<step>.pt` spelling.
std::string ResolveCheckpointPath(const std::string& path);

// Checks that every file the manifest lists exists with its size and CRC-32. Returns the
// manifest; throws std::runtime_error saying which file is missing or damaged.
nlohmann::json VerifyCheckpoint(const std::string& path);

}  // namespace dsv3::ckpt
