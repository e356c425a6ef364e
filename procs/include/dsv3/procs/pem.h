// Reading PEM files (certificates, keys, CAs): the one reader that dsv3d, dsv3ctl,
// dsv3-agent and the ranks' controller reporter share, so that each names the same problems
// the same way.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace dsv3::procs {

// The text of a PEM file, or an error naming `what` (a flag such as --tls-ca, or an
// environment variable), the path and why: NOT_FOUND when it cannot be read,
// INVALID_ARGUMENT when it holds no PEM block.
absl::StatusOr<std::string> ReadPemFile(const std::string& what, const std::string& path);

}  // namespace dsv3::procs
