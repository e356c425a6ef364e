#include "admin.h"

#include <sys/stat.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <sstream>

#include "rpc/auth.h"
#include "store/job_store.h"

namespace dsv3::server {
namespace {

// Commands that add something (users, tokens, agents) create the state dir and its store
// when they are not there yet, as dsv3d's first start would: an operator may set up users
// before starting the daemon. Listing and revoking need the store to exist.
enum class Missing { kCreate, kRefuse };

absl::StatusOr<std::unique_ptr<JobStore>> OpenStore(const std::string& state_dir, Missing missing) {
  const std::string path = state_dir + "/dsv3.db";
  struct stat st {};
  if (stat(state_dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError("--state-dir: " + state_dir + " is a file, not a folder");
  }
  if (stat(path.c_str(), &st) != 0) {
    if (missing == Missing::kRefuse) {
      return absl::NotFoundError("--state-dir: " + state_dir + " holds no dsv3 store yet (" + path +
                                 "); dsv3d creates it at its first start, and so does `dsv3d user add NAME "
                                 "--state-dir " + state_dir + "`");
    }
    std::error_code ec;
    std::filesystem::create_directories(state_dir, ec);
    if (ec) return absl::UnavailableError("--state-dir: cannot create " + state_dir + ": " + ec.message());
  }
  return JobStore::Open(path);
}

// User and agent names: what a hosts file, a folder name and a log line can all hold.
absl::Status CheckName(const char* what, const std::string& name) {
  const bool ok = !name.empty() && name.size() <= 64 && name[0] != '.' && name[0] != '-' &&
                  name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") ==
                      std::string::npos;
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(std::string(what) + ": '" + name +
                                    "' is not a valid name (1..64 of A-Z a-z 0-9 _ . -, not starting with . or -)");
}

std::string Date(int64_t ms) {
  if (ms == 0) return "-";
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M", std::gmtime(&t));
  return buf;
}

absl::StatusOr<std::string> IssueToken(const std::string& state_dir, const std::string& kind,
                                       const std::string& subject, const std::string& label) {
  auto store = OpenStore(state_dir, Missing::kCreate);
  if (!store.ok()) return store.status();
  if (kind == "user" && !(*store)->GetUser(subject)) {
    return absl::NotFoundError("user '" + subject + "' does not exist (dsv3d user add " + subject + ")");
  }
  std::string token;
  try {
    token = NewToken(kind);
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
  auto rec = (*store)->AddToken(Sha256Hex(token), kind, subject, label);
  if (!rec.ok()) return rec.status();
  return (kind == "agent" ? "credential for agent '" : "token for user '") + subject + "' (id " +
         std::to_string(rec->id) + "; shown once, only its hash is kept): " + token + "\n";
}

}  // namespace

absl::StatusOr<std::string> AdminAddUser(const std::string& state_dir, const std::string& name, bool admin,
                                         int max_jobs, int max_slots) {
  if (absl::Status s = CheckName("NAME", name); !s.ok()) return s;
  if (max_jobs < 0 || max_slots < 0) {
    return absl::InvalidArgumentError("--max-jobs / --max-slots: must be >= 0 (0 = the daemon's default)");
  }
  auto store = OpenStore(state_dir, Missing::kCreate);
  if (!store.ok()) return store.status();
  if (absl::Status s = (*store)->AddUser({name, admin, max_jobs, max_slots, 0}); !s.ok()) return s;
  return "added user '" + name + "'" + (admin ? " (admin)" : "") + "; give them a token with `dsv3d token create " +
         name + "`\n";
}

absl::StatusOr<std::string> AdminListUsers(const std::string& state_dir) {
  auto store = OpenStore(state_dir, Missing::kRefuse);
  if (!store.ok()) return store.status();
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-24s %-6s %-9s %-10s %s\n", "USER", "ADMIN", "MAX_JOBS", "MAX_SLOTS", "CREATED");
  out << line;
  for (const auto& u : (*store)->Users()) {
    std::snprintf(line, sizeof(line), "%-24s %-6s %-9s %-10s %s\n", u.name.c_str(), u.admin ? "yes" : "no",
                  u.max_jobs > 0 ? std::to_string(u.max_jobs).c_str() : "default",
                  u.max_slots > 0 ? std::to_string(u.max_slots).c_str() : "default", Date(u.created_ms).c_str());
    out << line;
  }
  return out.str();
}

absl::StatusOr<std::string> AdminCreateToken(const std::string& state_dir, const std::string& user,
                                             const std::string& label) {
  if (absl::Status s = CheckName("NAME", user); !s.ok()) return s;
  return IssueToken(state_dir, "user", user, label);
}

absl::StatusOr<std::string> AdminAddAgent(const std::string& state_dir, const std::string& name) {
  if (absl::Status s = CheckName("NAME", name); !s.ok()) return s;
  return IssueToken(state_dir, "agent", name, "");
}

absl::StatusOr<std::string> AdminRevokeToken(const std::string& state_dir, const std::string& which) {
  auto store = OpenStore(state_dir, Missing::kRefuse);
  if (!store.ok()) return store.status();
  int64_t id = 0;
  if (!which.empty() && which.size() < 18 && which.find_first_not_of("0123456789") == std::string::npos) {
    id = std::stoll(which);
  } else {
    const auto rec = (*store)->FindToken(Sha256Hex(which));
    if (!rec) return absl::NotFoundError("TOKEN: not a valid token of this controller (or revoked already)");
    id = rec->id;
  }
  if (absl::Status s = (*store)->RevokeToken(id); !s.ok()) return s;
  return "revoked token " + std::to_string(id) + "\n";
}

absl::StatusOr<std::string> AdminListTokens(const std::string& state_dir) {
  auto store = OpenStore(state_dir, Missing::kRefuse);
  if (!store.ok()) return store.status();
  std::ostringstream out;
  char line[320];
  std::snprintf(line, sizeof(line), "%-5s %-6s %-24s %-17s %-17s %s\n", "ID", "KIND", "FOR", "CREATED", "REVOKED",
                "LABEL");
  out << line;
  for (const auto& t : (*store)->Tokens()) {
    std::snprintf(line, sizeof(line), "%-5lld %-6s %-24s %-17s %-17s %s\n", static_cast<long long>(t.id),
                  t.kind.c_str(), t.subject.c_str(), Date(t.created_ms).c_str(), Date(t.revoked_ms).c_str(),
                  t.label.c_str());
    out << line;
  }
  return out.str();
}

}  // namespace dsv3::server
