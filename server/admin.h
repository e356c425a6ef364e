// `dsv3d user|token|agent ...`: administration of a controller's users, their bearer tokens
// and the agents' credentials, run on the controller host against its --state-dir. The
// store is SQLite in WAL mode, so these run safely next to a live dsv3d, which sees the
// change on the next call. Each returns the text to print, or an error naming the argument.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace dsv3::server {

absl::StatusOr<std::string> AdminAddUser(const std::string& state_dir, const std::string& name, bool admin,
                                         int max_jobs, int max_slots);
absl::StatusOr<std::string> AdminListUsers(const std::string& state_dir);
// A new user token; the token is the last word of the text (scripts take it from there).
absl::StatusOr<std::string> AdminCreateToken(const std::string& state_dir, const std::string& user,
                                             const std::string& label);
// A new credential for the dsv3-agent called `name`; the credential is the last word.
absl::StatusOr<std::string> AdminAddAgent(const std::string& state_dir, const std::string& name);
// `which`: a token id from `dsv3d token list`, or the token itself.
absl::StatusOr<std::string> AdminRevokeToken(const std::string& state_dir, const std::string& which);
absl::StatusOr<std::string> AdminListTokens(const std::string& state_dir);

}  // namespace dsv3::server
