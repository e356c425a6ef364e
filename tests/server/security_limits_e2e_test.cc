// A controller shared by several users, at its limits: confined output paths, plaintext
// listening off loopback, per-user quotas, 1,000 hostile configs and requests, and slow HTTP
// clients. Every scenario runs a real dsv3d. (Part of security_e2e_test.)
#include <chrono>
#include <random>

#include <grpcpp/generic/generic_stub.h>

#include "security_fixture.h"

namespace dsv3::test {
namespace {

using std::chrono::seconds;

TEST_F(SecurityTest, OutputPathsOutsideTheWorkRootAreRefusedWithTheField) {
  auto d = StartShared();
  ASSERT_EQ(d->Admin({"user", "add", "alice"}), 0);
  const Client alice(d->address(), d->Issue({"token", "create", "alice"}));
  const fs::path root = d->state_dir() / "work" / "alice";
  const fs::path outside = dir_.path() / "outside";
  fs::create_directories(outside);
  fs::create_directories(root);
  fs::create_symlink(outside, root / "escape");
  const auto refused = [&](const nlohmann::json& config, const std::string& field) {
    const grpc::Status s = alice.Submit(config, nullptr);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_NE(s.error_message().find(field + ": "), std::string::npos) << s.error_message();
  };
  nlohmann::json c = UserConfig(5);
  c["output_dir"] = "../../etc";
  refused(c, "/output_dir");
  c = UserConfig(5);
  c["output_dir"] = "/etc/dsv3";
  refused(c, "/output_dir");
  c = UserConfig(5);
  c["checkpointing"]["dir"] = (root / "escape" / "ckpt").string();
  refused(c, "/checkpointing/dir");
  c = UserConfig(5);
  c["data"]["cache_dir"] = "escape/cache";
  refused(c, "/data/cache_dir");
  c = UserConfig(5);
  c["data"]["sources"][0]["paths"] = {"/etc/passwd"};
  refused(c, "/data/sources/0/paths/0");
  EXPECT_TRUE(fs::is_empty(outside));
  // Inside the root, it runs, and its outputs land there.
  c = UserConfig(5);
  c["checkpointing"]["dir"] = (root / "ckpt").string();
  int64_t id = 0;
  const grpc::Status s = alice.Submit(c, &id);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_TRUE(WaitFor([&] { return alice.State(id) == v1::JOB_STATE_COMPLETED; }, seconds(120)));
  EXPECT_TRUE(fs::exists(root / "ckpt"));
  EXPECT_TRUE(fs::exists(root / "cache"));
}

TEST_F(SecurityTest, NonLoopbackListenWithoutTlsIsRefusedUnlessInsecure) {
  const fs::path state = dir_.path() / "state";
  int rc = 0;
  std::string out = Shell(std::string(DSV3D_PATH) + " --listen 0.0.0.0:0 --http-listen 127.0.0.1:0 --state-dir " +
                              state.string() + " 2>&1",
                          &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("--listen 0.0.0.0:0 is not loopback and TLS is off"), std::string::npos) << out;
  EXPECT_NE(out.find("deploy/gen-certs.sh"), std::string::npos) << out;
  const fs::path pki = MakeCerts(dir_.path() / "pki");
  out = Shell(std::string(DSV3D_PATH) + " --listen 127.0.0.1:0 --state-dir " + state.string() + " --tls-cert " +
                  (pki / "server.pem").string() + " --tls-key " + (pki / "alice.key").string() + " 2>&1",
              &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("is not the private key of --tls-cert"), std::string::npos) << out;
  Dsv3d d(state, 1, 20, {"--listen", "0.0.0.0:0", "--insecure"});
  d.Start();
  EXPECT_NE(d.log_text().find("dsv3d: warning: --insecure: serving plaintext gRPC on 0.0.0.0:0"), std::string::npos)
      << d.log_text();
  // Beyond loopback nobody is trusted without a token, even with no users defined.
  const grpc::Status s = Client("127.0.0.1:" + std::to_string(d.port()), "").WhoAmI();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
}

TEST_F(SecurityTest, QuotaExceedingSubmitsAreRefusedWithTheLimitNamed) {
  auto d = StartShared({"--max-jobs-per-user", "1", "--max-log-lines", "50"});
  ASSERT_EQ(d->Admin({"user", "add", "alice"}), 0);
  ASSERT_EQ(d->Admin({"user", "add", "carol", "--max-jobs", "5", "--max-slots", "1"}), 0);
  const Client alice(d->address(), d->Issue({"token", "create", "alice"}));
  const Client carol(d->address(), d->Issue({"token", "create", "carol"}));
  int64_t first = 0;
  ASSERT_TRUE(alice.Submit(UserConfig(100000), &first).ok());
  grpc::Status s = alice.Submit(UserConfig(5), nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(),
            "user 'alice' has 1 job(s) not yet ended; the limit is 1 (max_jobs); wait for one to end or cancel one");
  nlohmann::json two_ranks = UserConfig(5);
  two_ranks["training"]["micro_batch_size"] = 4;
  s = carol.Submit(two_ranks, nullptr, 2);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(),
            "user 'carol' has 0 rank(s) in jobs not yet ended and asks for 2 more; the limit is 1 (max_slots)");
  // At most --max-log-lines lines per logs request.
  v1::StreamLogsRequest logs;
  logs.set_job_id(first);
  logs.set_tail_lines(51);
  auto ctx = alice.Ctx();
  auto reader = alice.stub->StreamLogs(ctx.get(), logs);
  v1::LogChunk chunk;
  while (reader->Read(&chunk)) {
  }
  s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "tail_lines: 51 is outside 0..50");
  // A job that ended frees its place.
  ASSERT_TRUE(alice.Cancel(first).ok());
  ASSERT_TRUE(WaitFor([&] { return alice.State(first) == v1::JOB_STATE_CANCELED; }, seconds(60)));
  s = alice.Submit(UserConfig(5), nullptr);
  EXPECT_TRUE(s.ok()) << s.error_message();
  // The size limit on a config.
  v1::SubmitJobRequest big;
  big.set_config_json(std::string(5 << 20, ' '));
  v1::SubmitJobResponse resp;
  s = alice.stub->SubmitJob(alice.Ctx().get(), big, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "config_json: 5242880 bytes exceeds the limit of 4194304");
}

// 1,000 malformed configs and requests: each gets an answer with a message, and the
// controller keeps serving.
TEST_F(SecurityTest, MalformedConfigsAndRequestsGetClearErrorsAndNeverCrashTheController) {
  auto d = StartShared();
  ASSERT_EQ(d->Admin({"user", "add", "alice"}), 0);
  const Client alice(d->address(), d->Issue({"token", "create", "alice"}));
  std::mt19937 rng(20261129);
  const std::string valid = UserConfig(5).dump();
  const auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng() & 0xff);
    return s;
  };
  // Mutations of a valid config: flipped bytes, cuts, and JSON values of the wrong kind.
  const auto mutate = [&](int i) {
    std::string s = valid;
    switch (i % 4) {
      case 0:
        for (int k = 0; k < 8; ++k) s[rng() % s.size()] = static_cast<char>(rng() & 0xff);
        return s;
      case 1:
        return s.substr(0, rng() % s.size());
      case 2: {
        nlohmann::json j = nlohmann::json::parse(valid);
        const char* keys[] = {"training", "model", "data", "output_dir", "checkpointing", "slurm", "max_restarts"};
        const nlohmann::json values[] = {nullptr, -1, "x", nlohmann::json::array({1, 2}), 1e308, true};
        j[keys[rng() % 7]] = values[rng() % 6];
        return j.dump();
      }
      default:
        return random_bytes(rng() % 512);
    }
  };
  // A mutant may still be a valid config (a flipped byte inside a name); every other one is
  // INVALID_ARGUMENT with a message, never a crash or an internal error.
  int refused = 0, refused_bytes = 0;
  for (int i = 0; i < 600; ++i) {
    v1::SubmitJobRequest req;
    req.set_config_json(mutate(i));
    req.set_dry_run(true);
    req.set_num_ranks(static_cast<int>(rng() % 5) - 1);
    v1::SubmitJobResponse resp;
    const grpc::Status s = alice.stub->SubmitJob(alice.Ctx().get(), req, &resp);
    ASSERT_NE(s.error_code(), grpc::StatusCode::UNAVAILABLE) << "the controller died on: " << req.config_json();
    if (s.ok()) continue;
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "case " << i % 4 << ": " << s.error_message();
    EXPECT_FALSE(s.error_message().empty());
    ++refused;
    if (i % 4 == 3) ++refused_bytes;
  }
  EXPECT_EQ(refused_bytes, 150);  // random bytes are never a config
  EXPECT_GE(refused, 250);
  // Requests with values out of range, and bytes that are not a message at all, to every
  // method of the service.
  for (int i = 0; i < 200; ++i) {
    v1::StreamLogsRequest logs;
    logs.set_job_id(static_cast<int64_t>(rng()) - (1ll << 31));
    logs.set_tail_lines(static_cast<int>(rng()));
    if (i % 2) logs.set_rank(static_cast<int>(rng()));
    EXPECT_FALSE(alice.Logs(logs.job_id()).ok());
    v1::GetMetricsRequest m;
    m.set_job_id(static_cast<int64_t>(rng()));
    m.set_max_points(-static_cast<int>(rng() % 100));
    v1::GetMetricsResponse mr;
    const grpc::Status s = alice.stub->GetMetrics(alice.Ctx().get(), m, &mr);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  }
  grpc::GenericStub generic(grpc::CreateChannel(d->address(), grpc::InsecureChannelCredentials()));
  const char* methods[] = {"SubmitJob", "GetJob", "ListJobs", "CancelJob", "GetMetrics", "ListCheckpoints",
                           "CheckpointJob", "ValidateConfig", "ListNodes", "WhoAmI"};
  for (int i = 0; i < 200; ++i) {
    const std::string bytes = random_bytes(1 + rng() % 256);
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    auto ctx = alice.Ctx();
    grpc::CompletionQueue cq;
    auto call = generic.PrepareUnaryCall(ctx.get(), std::string("/dsv3.v1.Controller/") + methods[i % 10], request, &cq);
    call->StartCall();
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_NE(status.error_code(), grpc::StatusCode::UNAVAILABLE) << methods[i % 10];
    EXPECT_NE(status.error_code(), grpc::StatusCode::INTERNAL) << methods[i % 10];
    if (!status.ok()) {
      EXPECT_FALSE(status.error_message().empty()) << methods[i % 10];
    }
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }
  v1::WhoAmIResponse who;
  ASSERT_TRUE(alice.WhoAmI(&who).ok());
  EXPECT_EQ(who.user(), "alice");
}

// A client that sends its request a byte at a time is dropped at the limit; scrapes from
// others are answered meanwhile.
TEST_F(SecurityTest, SlowHttpClientIsDroppedAfterTheLimitWhileScrapesWork) {
  Dsv3d d(dir_.path() / "state", 1, 20, {"--http-timeout", "1.5"});
  d.Start();
  const auto colon = d.http().rfind(':');
  const int port = std::stoi(d.http().substr(colon + 1));
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const auto start = std::chrono::steady_clock::now();
  const std::string slow = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  bool dropped = false;
  int scrapes = 0;
  for (size_t i = 0; i < 200 && !dropped; ++i) {
    const char c = i < slow.size() ? slow[i] : 'a';
    dropped = send(fd, &c, 1, MSG_NOSIGNAL) != 1;
    if (!dropped) {
      char buf[64];
      const ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      dropped = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    }
    if (HttpGet(d.http(), "/metrics").find("# TYPE dsv3_queue_length gauge") != std::string::npos) ++scrapes;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double held = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  close(fd);
  EXPECT_TRUE(dropped) << "the slow client was never dropped";
  EXPECT_GE(held, 1.4);
  EXPECT_LT(held, 6.0);
  EXPECT_GE(scrapes, 10);
}

}  // namespace
}  // namespace dsv3::test
