// The store's users and tokens: who may call a shared controller, and the credentials of
// the agents that may join it.
#include "store/job_store_internal.h"

namespace dsv3::server {
namespace {

using sqlite::Stmt;

UserRecord ReadUser(const Stmt& s) {
  return {s.Text(0), s.Int(1) != 0, static_cast<int>(s.Int(2)), static_cast<int>(s.Int(3)), s.Int(4)};
}

TokenRecord ReadToken(const Stmt& s) { return {s.Int(0), s.Text(1), s.Text(2), s.Text(3), s.Int(4), s.Int(5)}; }

constexpr const char* kUserColumns = "name, admin, max_jobs, max_slots, created_ms";
constexpr const char* kTokenColumns = "id, kind, subject, label, created_ms, revoked_ms";

}  // namespace

absl::Status JobStore::AddUser(const UserRecord& u) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  {
    Stmt q(impl_->db, "SELECT 1 FROM users WHERE name=?");
    q.Bind(1, u.name);
    if (q.Step()) return absl::AlreadyExistsError("user '" + u.name + "' exists already");
  }
  return Guarded("add user", [&] {
    Stmt s(impl_->db, "INSERT INTO users (name, admin, max_jobs, max_slots, created_ms) VALUES (?,?,?,?,?)");
    s.Bind(1, u.name).Bind(2, u.admin ? 1 : 0).Bind(3, u.max_jobs).Bind(4, u.max_slots);
    s.Bind(5, u.created_ms > 0 ? u.created_ms : NowMs()).Run();
  });
}

std::optional<UserRecord> JobStore::GetUser(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, (std::string("SELECT ") + kUserColumns + " FROM users WHERE name=?").c_str());
  s.Bind(1, name);
  if (!s.Step()) return std::nullopt;
  return ReadUser(s);
}

std::vector<UserRecord> JobStore::Users() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, (std::string("SELECT ") + kUserColumns + " FROM users ORDER BY name").c_str());
  std::vector<UserRecord> out;
  while (s.Step()) out.push_back(ReadUser(s));
  return out;
}

int64_t JobStore::CountUsers() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, "SELECT COUNT(*) FROM users");
  return s.Step() ? s.Int(0) : 0;
}

absl::StatusOr<TokenRecord> JobStore::AddToken(const std::string& sha256_hex, const std::string& kind,
                                              const std::string& subject, const std::string& label) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  TokenRecord t{0, kind, subject, label, NowMs(), 0};
  absl::Status st = Guarded("add token", [&] {
    Stmt s(impl_->db, "INSERT INTO tokens (sha256, kind, subject, label, created_ms) VALUES (?,?,?,?,?)");
    s.Bind(1, sha256_hex).Bind(2, kind).Bind(3, subject).Bind(4, label).Bind(5, t.created_ms).Run();
    t.id = impl_->db.LastInsertId();
  });
  if (!st.ok()) return st;
  return t;
}

std::optional<TokenRecord> JobStore::FindToken(const std::string& sha256_hex) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db,
         (std::string("SELECT ") + kTokenColumns + " FROM tokens WHERE sha256=? AND revoked_ms=0").c_str());
  s.Bind(1, sha256_hex);
  if (!s.Step()) return std::nullopt;
  return ReadToken(s);
}

std::vector<TokenRecord> JobStore::Tokens() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Stmt s(impl_->db, (std::string("SELECT ") + kTokenColumns + " FROM tokens ORDER BY id").c_str());
  std::vector<TokenRecord> out;
  while (s.Step()) out.push_back(ReadToken(s));
  return out;
}

absl::Status JobStore::RevokeToken(int64_t id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  {
    Stmt q(impl_->db, "SELECT 1 FROM tokens WHERE id=?");
    q.Bind(1, id);
    if (!q.Step()) return absl::NotFoundError("no token with id " + std::to_string(id) + " (dsv3d token list)");
  }
  return Guarded("revoke token", [&] {
    Stmt s(impl_->db, "UPDATE tokens SET revoked_ms=? WHERE id=? AND revoked_ms=0");
    s.Bind(1, NowMs()).Bind(2, id).Run();
  });
}

}  // namespace dsv3::server
