// The pieces of a shared controller's security, one by one: users and hashed tokens in
// the store, token authentication and the loopback trust rule, confinement of a config's
// paths (with real symlinks), and the HTTP request parser's limits.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "rpc/auth.h"
#include "admin.h"
#include "dsv3/procs/host.h"
#include "store/job_store.h"
#include "http/http_request.h"
#include "jobs/job_config.h"
#include "test_util.h"

namespace dsv3::server {
namespace {

namespace fs = std::filesystem;
using test::ReadFile;
using test::TempDir;

std::unique_ptr<JobStore> Store() {
  auto s = JobStore::Open(":memory:");
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

TEST(UserStore, UsersAndTokensRoundTripAndRevoke) {
  auto store = Store();
  ASSERT_TRUE(store->AddUser({"alice", false, 2, 8, 0}).ok());
  ASSERT_TRUE(store->AddUser({"root", true, 0, 0, 0}).ok());
  const absl::Status again = store->AddUser({"alice", true, 0, 0, 0});
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(again.message(), "user 'alice' exists already");
  EXPECT_EQ(store->CountUsers(), 2);
  const auto alice = store->GetUser("alice");
  ASSERT_TRUE(alice);
  EXPECT_FALSE(alice->admin);
  EXPECT_EQ(alice->max_jobs, 2);
  EXPECT_EQ(alice->max_slots, 8);
  EXPECT_FALSE(store->GetUser("nobody"));

  const std::string token = NewToken("user");
  EXPECT_EQ(token.size(), 6u + 48u);
  EXPECT_EQ(token.rfind("dsv3u_", 0), 0u);
  EXPECT_NE(NewToken("user"), token);
  auto rec = store->AddToken(Sha256Hex(token), "user", "alice", "laptop");
  ASSERT_TRUE(rec.ok());
  const auto found = store->FindToken(Sha256Hex(token));
  ASSERT_TRUE(found);
  EXPECT_EQ(found->id, rec->id);
  EXPECT_EQ(found->subject, "alice");
  EXPECT_EQ(found->label, "laptop");
  ASSERT_TRUE(store->RevokeToken(rec->id).ok());
  EXPECT_FALSE(store->FindToken(Sha256Hex(token)));
  EXPECT_GT(store->Tokens().at(0).revoked_ms, 0);
  EXPECT_EQ(store->RevokeToken(999).code(), absl::StatusCode::kNotFound);
}

TEST(Auth, Sha256MatchesTheStandardVectorAndSecretsCompareExactly) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(procs::SameSecret("dsv3u_abc", "dsv3u_abc"));
  EXPECT_FALSE(procs::SameSecret("dsv3u_abd", "dsv3u_abc"));
  EXPECT_FALSE(procs::SameSecret("dsv3u_ab", "dsv3u_abc"));
  EXPECT_FALSE(procs::SameSecret("dsv3u_abcd", "dsv3u_abc"));
  EXPECT_FALSE(procs::SameSecret("", ""));  // an empty secret admits nobody
}

TEST(Auth, TokensNameTheirUserAndLoopbackTrustEndsWithTheFirstUser) {
  auto store = Store();
  const Authenticator loopback(*store, "operator", /*trust_local=*/true, false);
  const Authenticator remote(*store, "operator", /*trust_local=*/false, false);
  grpc::ServerContext no_token;
  auto caller = loopback.Authenticate(no_token);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_EQ(caller->user, "operator");
  EXPECT_TRUE(caller->admin);
  EXPECT_TRUE(caller->trusted_local);
  EXPECT_EQ(remote.Authenticate(no_token).status().code(), absl::StatusCode::kUnauthenticated);

  ASSERT_TRUE(store->AddUser({"carol", false, 3, 0, 0}).ok());
  const std::string token = NewToken("user");
  ASSERT_TRUE(store->AddToken(Sha256Hex(token), "user", "carol", "").ok());
  const std::string agent = NewToken("agent");
  ASSERT_TRUE(store->AddToken(Sha256Hex(agent), "agent", "carol", "").ok());
  const auto no_more_trust = loopback.Authenticate(no_token);
  EXPECT_EQ(no_more_trust.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(no_more_trust.status().message().find("no token: log in with `dsv3ctl login"), std::string::npos);
  caller = remote.AuthenticateToken(token);
  ASSERT_TRUE(caller.ok());
  EXPECT_EQ(caller->user, "carol");
  EXPECT_FALSE(caller->admin);
  EXPECT_FALSE(caller->trusted_local);
  EXPECT_EQ(caller->max_jobs, 3);
  // An agent's credential is not a user's token, whatever name it carries.
  EXPECT_EQ(remote.AuthenticateToken(agent).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(remote.AuthenticateToken(token + "x").status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(Admin, NamesAreCheckedAndTokensAreTheLastWord) {
  TempDir dir;
  const std::string state = dir.path().string();
  auto bad = AdminAddUser(state, "../alice", false, 0, 0);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("NAME: '../alice' is not a valid name"), std::string::npos);
  EXPECT_EQ(AdminCreateToken(state, "ghost", "").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(AdminAddUser(state, "alice", false, 0, 0).ok());
  auto out = AdminCreateToken(state, "alice", "ci");
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string token = out->substr(out->rfind(' ') + 1, 54);
  EXPECT_EQ(token.rfind("dsv3u_", 0), 0u) << *out;
  auto store = JobStore::Open(state + "/dsv3.db");
  ASSERT_TRUE(store.ok());
  EXPECT_TRUE((*store)->FindToken(Sha256Hex(token)));
  auto revoked = AdminRevokeToken(state, token);
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_FALSE((*store)->FindToken(Sha256Hex(token)));
  EXPECT_EQ(AdminRevokeToken(state, "dsv3u_unknown").status().code(), absl::StatusCode::kNotFound);
}

// Users can be set up before dsv3d's first start: adding one creates the state dir and its
// store; listing a state dir that has none says how it comes to be.
TEST(Admin, AddingAUserCreatesTheStoreAsAFirstStartWould) {
  TempDir dir;
  const std::string state = (dir.path() / "var" / "dsv3").string();
  auto none = AdminListUsers(state);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find("holds no dsv3 store yet"), std::string::npos) << none.status();
  EXPECT_NE(none.status().message().find("dsv3d user add NAME --state-dir " + state), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(state));  // listing creates nothing
  auto added = AdminAddUser(state, "alice", true, 0, 0);
  ASSERT_TRUE(added.ok()) << added.status();
  auto listed = AdminListUsers(state);
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_NE(listed->find("alice"), std::string::npos) << *listed;
  std::ofstream(dir.path() / "file") << "x";
  EXPECT_EQ(AdminAddUser((dir.path() / "file").string(), "bob", false, 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class PathPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.path() / "work" / "alice";
    fs::create_directories(root_);
    fs::create_directories(dir_.path() / "datasets");
    fs::create_directories(dir_.path() / "jobs" / "7");
    fs::create_directories(dir_.path() / "jobs" / "8");
    fs::create_directories(dir_.path() / "elsewhere");
    fs::create_symlink(dir_.path() / "elsewhere", root_ / "link");
    policy_.confined = true;
    policy_.work_root = root_.string();
    policy_.read_roots = {(dir_.path() / "datasets").string()};
    policy_.jobs_root = (dir_.path() / "jobs").string();
    policy_.owns_job = [](int64_t id) { return id == 7; };
  }

  // The errors of the nano config with `edit` applied, as "path: message".
  std::vector<std::string> Errors(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json c = nlohmann::json::parse(ReadFile(fs::path(DSV3_SOURCE_DIR) / "configs/train_config_nano.json"),
                                             nullptr, true, true);
    for (auto& s : c["data"]["sources"]) {
      s["paths"] = {(dir_.path() / "datasets" / s["subset"].get<std::string>() / "*.json.gz").string()};
    }
    c["data"]["cache_dir"] = "cache";
    edit(c);
    const PreparedConfig p = PrepareJobConfig(c.dump(), 1, "", root_.string(), policy_);
    std::vector<std::string> out;
    for (const auto& e : p.errors) out.push_back(e.path + ": " + e.message);
    return out;
  }

  TempDir dir_;
  fs::path root_;
  PathPolicy policy_;
};

TEST_F(PathPolicyTest, PathsInsideTheRootsPass) {
  EXPECT_TRUE(Errors([](nlohmann::json&) {}).empty());
  EXPECT_TRUE(Errors([&](nlohmann::json& c) { c["checkpointing"]["dir"] = (root_ / "ckpt").string(); }).empty());
  EXPECT_TRUE(Errors([&](nlohmann::json& c) {
                c["checkpointing"]["resume_from"] = (dir_.path() / "jobs/7/checkpoints/checkpoint_20").string();
              }).empty());
  EXPECT_TRUE(Errors([](nlohmann::json& c) { c["output_dir"] = "./outputs/../outputs2"; }).empty());
}

TEST_F(PathPolicyTest, EscapesAreRefusedWithTheirField) {
  // The checkpoint folder follows output_dir when not set, and is refused with it.
  auto e = Errors([](nlohmann::json& c) { c["output_dir"] = "../../etc"; });
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0], "/output_dir: '../../etc' leaves the job's folder");
  EXPECT_EQ(e[1], "/checkpointing/dir: '../../etc/checkpoints' leaves the job's folder");
  e = Errors([](nlohmann::json& c) { c["output_dir"] = "/etc/dsv3"; });
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].rfind("/output_dir: '/etc/dsv3' resolves to /etc/dsv3, outside your work root (", 0), 0u) << e[0];
  e = Errors([&](nlohmann::json& c) { c["logging"]["tensorboard"]["log_dir"] = (root_ / "link" / "tb").string(); });
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("/logging/tensorboard/log_dir: '" + (root_ / "link" / "tb").string() + "' resolves to " +
                      (dir_.path() / "elsewhere" / "tb").string()),
            std::string::npos)
      << e[0];
  e = Errors([](nlohmann::json& c) { c["data"]["cache_dir"] = "link/cache"; });
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].rfind("/data/cache_dir: ", 0), 0u) << e[0];
  e = Errors([](nlohmann::json& c) { c["data"]["sources"][0]["paths"] = {"/etc/*", "../../../../etc/passwd"}; });
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].rfind("/data/sources/0/paths/0: '/etc/*'", 0), 0u) << e[0];
  EXPECT_EQ(e[1].rfind("/data/sources/0/paths/1: ", 0), 0u) << e[1];
  // Another user's job folder, and the slurm log paths.
  e = Errors([&](nlohmann::json& c) {
    c["checkpointing"]["resume_from"] = (dir_.path() / "jobs/8/checkpoints/checkpoint_20").string();
    c["slurm"]["output"] = "../../x-%j.out";
  });
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0], "/slurm/output: '../../x-%j.out' leaves the job's folder");
  EXPECT_EQ(e[1].rfind("/checkpointing/resume_from: ", 0), 0u) << e[1];
}

TEST(HttpRequest, LimitsAndRefusalsAreThoseOfTheEndpoint) {
  HttpLimits limits;
  HttpRequest r;
  EXPECT_EQ(ParseOneRequest("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nCookie: a=1; dsv3_token=t\r\n\r\n", limits, &r),
            0);
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.target, "/metrics?x=1");
  EXPECT_EQ(r.cookie, "a=1; dsv3_token=t");
  EXPECT_EQ(ParseOneRequest("HEAD /healthz HTTP/1.0\r\n\r\n", limits, &r), 0);
  EXPECT_EQ(ParseOneRequest("GET /metrics HTTP/1.1\r\nHost: a\r\n", limits, &r), -1);  // more to come
  EXPECT_EQ(ParseOneRequest("POST /api/v1/login HTTP/1.1\r\nAuthorization: Bearer x\r\nX-Dsv3-Request: 1\r\n"
                            "Content-Type: application/json\r\nContent-Length: 5\r\n\r\nhello",
                            limits, &r),
            0);
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.authorization, "Bearer x");
  EXPECT_EQ(r.csrf, "1");
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(r.body, "hello");
  EXPECT_EQ(ParseOneRequest("DELETE /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", limits, &r), 405);
  EXPECT_EQ(ParseOneRequest("POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'a'), limits, &r),
            413);
  EXPECT_EQ(ParseOneRequest("GET / HTTP/1.1\r\nX: " + std::string(9000, 'a') + "\r\n\r\n", limits, &r), 431);
  EXPECT_EQ(ParseOneRequest("\x01\x02 nonsense\r\n\r\n", limits, &r), 400);
}

}  // namespace
}  // namespace dsv3::server
