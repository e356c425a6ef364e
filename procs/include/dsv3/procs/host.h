// What dsv3's processes (dsv3d, dsv3-agent, dsv3ctl) need from the host they run on: its
// name, the dsv3 binaries installed next to the running one, random secrets, and appends to
// rank logs that never split a line.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace dsv3::procs {

// gethostname(), or "localhost" when it fails.
std::string HostName();

// `name` (e.g. "dsv3-worker") next to the running executable or in a build tree's worker/
// folder, as an absolute path; nullopt when neither holds an executable of that name.
std::optional<std::string> FindSiblingBinary(const std::string& name);

// `bytes` random bytes from /dev/urandom as lowercase hex (credentials, tokens). Throws
// std::runtime_error when /dev/urandom cannot be read.
std::string RandomHex(size_t bytes);

// Whether a presented secret equals the expected one, in time that does not depend on where
// they differ. An empty expected secret matches nothing.
bool SameSecret(const std::string& given, const std::string& expected);

// Appends `text` (whole lines) to the file at `path` with one O_APPEND write, so lines of
// several writers (the rank, dsv3d, an agent's shipped output) never interleave mid-line.
absl::Status AppendToLog(const std::string& path, const std::string& text);

}  // namespace dsv3::procs
