// File checksums for checkpoint manifests: CRC-32 (zlib's polynomial) of the whole file,
// as 8 hex digits. Detects torn and corrupted files; not a defence against tampering.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace dsv3 {

// nullopt when the file cannot be read.
std::optional<std::string> Crc32OfFile(const std::string& path);

}  // namespace dsv3
