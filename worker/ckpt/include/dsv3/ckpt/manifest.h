// Checkpoint manifests without LibTorch: path resolution and checksum verification, shared
// by the trainer (dsv3_ckpt) and dsv3ctl (export-hf), which must stay LibTorch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::ckpt {

// /2: optimizer state in per-rank shard files (any data-parallel size loads them); /1 held a
// LibTorch optimizer archive.
inline constexpr const char* kCheckpointFormat = "dsv3-checkpoint/2";

// A checkpoint directory from the directory itself, its manifest.json, or the guide's
// `checkpoint_<step>.pt` spelling.
std::string ResolveCheckpointPath(const std::string& path);

// Parses manifest.json's text and checks its shape: the format is kCheckpointFormat and
// "files" maps plain file names (no '/', not . or ..) to {"bytes": size, "crc32": hex}.
// Throws std::runtime_error starting with `where`.
nlohmann::json ParseManifest(const std::string& text, const std::string& where);

// Checks that every file the manifest lists exists with its size and CRC-32. Returns the
// manifest; throws std::runtime_error saying which file is missing or damaged.
nlohmann::json VerifyCheckpoint(const std::string& path);

// The step of a checkpoint directory named `checkpoint_<step>`; nullopt for other names.
std::optional<int64_t> CheckpointStep(const std::string& dir_name);

// The newest checkpoint_<step> in `dir` that verifies (a crash mid-save or a damaged file
// makes an older one the newest intact); damaged newer ones are listed in `skipped` with the
// reason. nullopt when there is none. Used by the trainer's `--resume latest` and by dsv3d's
// restarts.
std::optional<std::string> LatestIntactCheckpoint(const std::string& dir, std::vector<std::string>* skipped);

}  // namespace dsv3::ckpt
