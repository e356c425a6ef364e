// A controller shared by several users, end to end: TLS and mTLS, tokens on every call,
// job ownership, per-job rank credentials, confined paths, quotas, hostile requests and
// slow HTTP clients. Every scenario runs a real dsv3d; certificates come from
// deploy/gen-certs.sh, as an operator's would.
#include <sys/stat.h>

#include <chrono>
#include <random>

#include <grpcpp/generic/generic_stub.h>

#include "controller_fixture.h"
#include "dsv3/v1/worker.grpc.pb.h"

namespace dsv3::test {
namespace {

using std::chrono::seconds;

// A certificate set made by deploy/gen-certs.sh into `dir`.
fs::path MakeCerts(const fs::path& dir) {
  int rc = 0;
  const std::string out =
      Shell(std::string(DSV3_SOURCE_DIR) + "/deploy/gen-certs.sh " + dir.string() + " --client alice 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  return dir;
}


// One user's connection: a stub and the token every call carries.
struct Client {
  std::unique_ptr<v1::Controller::Stub> stub;
  std::string token;

  Client(const std::string& address, const std::string& token_,
         std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials())
      : stub(v1::Controller::NewStub(grpc::CreateChannel(address, creds))), token(token_) {}

  std::unique_ptr<grpc::ClientContext> Ctx() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() + seconds(30));
    return ctx;
  }
  grpc::Status WhoAmI(v1::WhoAmIResponse* who = nullptr) const {
    v1::WhoAmIResponse ignored;
    return stub->WhoAmI(Ctx().get(), v1::WhoAmIRequest{}, who ? who : &ignored);
  }
  grpc::Status Submit(const nlohmann::json& config, int64_t* id, int ranks = 1) const {
    v1::SubmitJobRequest req;
    req.set_config_json(config.dump());
    req.set_num_ranks(ranks);
    v1::SubmitJobResponse resp;
    const grpc::Status s = stub->SubmitJob(Ctx().get(), req, &resp);
    if (id != nullptr) *id = resp.job().id();
    return s;
  }
  grpc::Status Get(int64_t id, v1::Job* job) const {
    v1::GetJobRequest req;
    req.set_job_id(id);
    return stub->GetJob(Ctx().get(), req, job);
  }
  std::vector<int64_t> List() const {
    v1::ListJobsRequest req;
    v1::ListJobsResponse resp;
    EXPECT_TRUE(stub->ListJobs(Ctx().get(), req, &resp).ok());
    std::vector<int64_t> ids;
    for (const auto& j : resp.jobs()) ids.push_back(j.id());
    return ids;
  }
  grpc::Status Cancel(int64_t id) const {
    v1::CancelJobRequest req;
    req.set_job_id(id);
    v1::CancelJobResponse resp;
    return stub->CancelJob(Ctx().get(), req, &resp);
  }
  grpc::Status Logs(int64_t id) const {
    v1::StreamLogsRequest req;
    req.set_job_id(id);
    auto ctx = Ctx();
    auto reader = stub->StreamLogs(ctx.get(), req);
    v1::LogChunk chunk;
    while (reader->Read(&chunk)) {
    }
    return reader->Finish();
  }
  v1::JobState State(int64_t id) const {
    v1::Job job;
    return Get(id, &job).ok() ? job.state() : v1::JOB_STATE_UNSPECIFIED;
  }
};

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override { Corpus(); }

  // A job config for a confined user: inputs from the shared corpus (a --read-root), the
  // token cache in the user's own folder.
  static nlohmann::json UserConfig(int64_t steps) {
    nlohmann::json c = QuickConfig(steps, steps);
    c["data"]["cache_dir"] = "cache";
    c["training"]["intra_op_threads"] = 1;
    return c;
  }

  std::unique_ptr<Dsv3d> StartShared(std::vector<std::string> more = {}, int slots = 2) {
    std::vector<std::string> args = {"--read-root", Corpus().string()};
    args.insert(args.end(), more.begin(), more.end());
    auto d = std::make_unique<Dsv3d>(dir_.path() / "state", slots, 20, args);
    d->Start();
    return d;
  }

  TempDir dir_;
};

TEST_F(SecurityTest, TlsHandshakeSucceedsAndAWrongCaIsRejected) {
  const fs::path pki = MakeCerts(dir_.path() / "pki");
  const fs::path other = MakeCerts(dir_.path() / "other-pki");
  Dsv3d d(dir_.path() / "state", 1, 20,
          {"--tls-cert", (pki / "server.pem").string(), "--tls-key", (pki / "server.key").string(), "--http-tls"});
  d.Start();
  std::string out;
  // /metrics and /healthz over HTTPS with the same certificate, verified by Python's ssl.
  int rc = 0;
  out = Shell("/usr/bin/python3 -c \"import ssl, urllib.request; ctx = ssl.create_default_context(cafile='" +
                  (pki / "ca.pem").string() + "'); print(urllib.request.urlopen('https://" + d.http() +
                  "/healthz', context=ctx).read().decode(), end='')\"",
              &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "ok\n");
  EXPECT_EQ(HttpGet(d.http(), "/healthz"), "") << "plain HTTP on the HTTPS port";
  // dsv3ctl verifies the controller with the CA that signed its certificate.
  EXPECT_EQ(Cli({"whoami", "--controller", d.address(), "--tls-ca", (pki / "ca.pem").string()}, &out), 0) << out;
  EXPECT_NE(out.find("(trusted: a loopback controller without users)"), std::string::npos) << out;
  EXPECT_EQ(Cli({"status", "--controller", d.address(), "--tls-ca", (pki / "ca.pem").string()}, &out), 0) << out;
  // Another CA: the handshake fails and dsv3ctl says what to check.
  EXPECT_EQ(Cli({"whoami", "--controller", d.address(), "--tls-ca", (other / "ca.pem").string()}, &out), 3) << out;
  EXPECT_NE(out.find("the TLS handshake with " + d.address() + " failed"), std::string::npos) << out;
  // Plaintext against a TLS port: refused, with the hint.
  EXPECT_EQ(Cli({"whoami", "--controller", d.address()}, &out), 3) << out;
  EXPECT_NE(out.find("if it serves TLS, pass --tls-ca FILE"), std::string::npos) << out;
}

// Ranks verify a TLS controller with the CA it hands them; agents with their --tls-ca,
// which they hand to their ranks. Neither needs a client certificate under mTLS: they
// present the credentials dsv3d issued.
TEST_F(SecurityTest, RanksAndAgentsReportToATlsController) {
  const fs::path pki = MakeCerts(dir_.path() / "pki");
  const std::vector<std::string> tls = {"--tls-cert", (pki / "server.pem").string(), "--tls-key",
                                        (pki / "server.key").string(), "--tls-ca", (pki / "ca.pem").string(),
                                        "--tls-client-ca", (pki / "ca.pem").string()};
  auto creds = [&] {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = ReadFile(pki / "ca.pem");
    o.pem_cert_chain = ReadFile(pki / "alice.pem");
    o.pem_private_key = ReadFile(pki / "alice.key");
    return grpc::SslCredentials(o);
  };
  nlohmann::json config = QuickConfig(10, 10);
  config["training"]["intra_op_threads"] = 1;
  {
    Dsv3d d(dir_.path() / "local", 1, 20, tls);
    d.Start();
    const Client local(d.address(), "", creds());
    int64_t id = 0;
    ASSERT_TRUE(local.Submit(config, &id).ok());
    ASSERT_TRUE(WaitFor([&] { return local.State(id) == v1::JOB_STATE_COMPLETED; }, seconds(120)))
        << v1::JobState_Name(local.State(id));
    v1::GetMetricsRequest req;
    req.set_job_id(id);
    req.add_names("loss");
    v1::GetMetricsResponse resp;
    ASSERT_TRUE(local.stub->GetMetrics(local.Ctx().get(), req, &resp).ok());
    ASSERT_EQ(resp.series_size(), 1);
    EXPECT_EQ(resp.series(0).points(resp.series(0).points_size() - 1).step(), 10);
  }
  std::vector<std::string> args = tls;
  args.insert(args.end(), {"--allocator", "static"});
  Dsv3d d(dir_.path() / "static", 1, 20, args);
  d.Start();
  Child agent({DSV3_AGENT_PATH, "--controller", d.address(), "--name", "node-a", "--slots", "1", "--advertise",
               "127.0.0.2", "--token-file", d.AgentCredential("node-a").string(), "--tls-ca",
               (pki / "ca.pem").string(), "--work-dir", (dir_.path() / "agent").string()},
              dir_.path() / "agent.log");
  const Client remote(d.address(), "", creds());
  ASSERT_TRUE(WaitFor(
      [&] {
        v1::ListNodesResponse nodes;
        if (!remote.stub->ListNodes(remote.Ctx().get(), v1::ListNodesRequest{}, &nodes).ok()) return false;
        // Slurm's nodes are listed too where Slurm runs (deploy/test.sh starts one).
        return std::any_of(nodes.nodes().begin(), nodes.nodes().end(),
                           [](const v1::Node& n) { return n.name() == "node-a" && n.state() == "up"; });
      },
      seconds(30)))
      << agent.Log();
  int64_t id = 0;
  ASSERT_TRUE(remote.Submit(config, &id).ok());
  ASSERT_TRUE(WaitFor([&] { return remote.State(id) == v1::JOB_STATE_COMPLETED; }, seconds(120)))
      << v1::JobState_Name(remote.State(id)) << agent.Log();
}

TEST_F(SecurityTest, MutualTlsRefusesACallWithoutAClientCertificate) {
  const fs::path pki = MakeCerts(dir_.path() / "pki");
  Dsv3d d(dir_.path() / "state", 1, 20,
          {"--tls-cert", (pki / "server.pem").string(), "--tls-key", (pki / "server.key").string(), "--tls-client-ca",
           (pki / "ca.pem").string()});
  d.Start();
  std::string out;
  const std::string ca = (pki / "ca.pem").string();
  EXPECT_EQ(Cli({"whoami", "--controller", d.address(), "--tls-ca", ca}, &out), 1) << out;
  EXPECT_NE(out.find("requires a client certificate signed by its --tls-client-ca"), std::string::npos) << out;
  EXPECT_EQ(Cli({"whoami", "--controller", d.address(), "--tls-ca", ca, "--tls-cert", (pki / "alice.pem").string(),
                 "--tls-key", (pki / "alice.key").string()},
                &out),
            0)
      << out;
  // A certificate from a CA the controller does not trust fails the handshake.
  const fs::path other = MakeCerts(dir_.path() / "other-pki");
  EXPECT_EQ(Cli({"whoami", "--controller", d.address(), "--tls-ca", ca, "--tls-cert", (other / "alice.pem").string(),
                 "--tls-key", (other / "alice.key").string()},
                &out),
            3)
      << out;
}

TEST_F(SecurityTest, EveryCallNeedsAValidTokenOnceAUserExists) {
  auto d = StartShared();
  Client anonymous(d->address(), "");
  // Loopback, no users: the local user is trusted (the quickstart stays two commands).
  v1::WhoAmIResponse who;
  ASSERT_TRUE(anonymous.WhoAmI(&who).ok());
  EXPECT_TRUE(who.trusted_local());
  ASSERT_EQ(d->Admin({"user", "add", "alice"}), 0);
  const std::string token = d->Issue({"token", "create", "alice", "--label", "laptop"});
  EXPECT_EQ(token.rfind("dsv3u_", 0), 0u) << token;
  // No token, a made-up token: UNAUTHENTICATED, saying how to get one.
  grpc::Status s = anonymous.WhoAmI();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(s.error_message().find("no token: log in with `dsv3ctl login"), std::string::npos) << s.error_message();
  s = Client(d->address(), "dsv3u_0123456789").WhoAmI();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(s.error_message().find("the token is not valid (unknown or revoked)"), std::string::npos);
  // The real one, in every form dsv3ctl takes it: --token, login's saved file, DSV3_TOKEN.
  ASSERT_TRUE(Client(d->address(), token).WhoAmI(&who).ok());
  EXPECT_EQ(who.user(), "alice");
  EXPECT_FALSE(who.admin());
  const fs::path config_home = dir_.path() / "config";
  setenv("XDG_CONFIG_HOME", config_home.c_str(), 1);
  std::string out;
  EXPECT_EQ(Cli({"login", "--controller", d->address(), "--token", token}, &out), 0) << out;
  EXPECT_NE(out.find("logged in to " + d->address() + " as alice"), std::string::npos) << out;
  struct stat st {};
  ASSERT_EQ(stat((config_home / "dsv3/credentials.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(Cli({"whoami"}, &out), 0) << out;  // the saved controller and token
  EXPECT_EQ(out, "alice at " + d->address() + "\n");
  setenv("DSV3_TOKEN", "dsv3u_not-a-token", 1);  // the environment overrides the saved token
  EXPECT_EQ(Cli({"whoami"}, &out), 1) << out;
  unsetenv("DSV3_TOKEN");
  // Revoked: refused at once, by the running dsv3d.
  std::string listing;
  ASSERT_EQ(d->Admin({"token", "list"}, &listing), 0);
  EXPECT_NE(listing.find("laptop"), std::string::npos) << listing;
  EXPECT_EQ(listing.find(token), std::string::npos) << "token list must never show a token";
  ASSERT_EQ(d->Admin({"token", "revoke", token}), 0);
  s = Client(d->address(), token).WhoAmI();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Cli({"whoami"}, &out), 1) << out;
  EXPECT_NE(out.find("did not accept you: the token is not valid"), std::string::npos) << out;
  unsetenv("XDG_CONFIG_HOME");
  // The store keeps hashes only.
  EXPECT_EQ(ReadFile(d->state_dir() / "dsv3.db").find(token), std::string::npos);
}

TEST_F(SecurityTest, UsersSeeAndControlOnlyTheirOwnJobsAndAdminsSeeAll) {
  auto d = StartShared();
  ASSERT_EQ(d->Admin({"user", "add", "alice"}), 0);
  ASSERT_EQ(d->Admin({"user", "add", "bob"}), 0);
  ASSERT_EQ(d->Admin({"user", "add", "root", "--admin"}), 0);
  const Client alice(d->address(), d->Issue({"token", "create", "alice"}));
  const Client bob(d->address(), d->Issue({"token", "create", "bob"}));
  const Client root(d->address(), d->Issue({"token", "create", "root"}));
  int64_t id = 0;
  grpc::Status s = alice.Submit(UserConfig(100000), &id);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_TRUE(WaitFor([&] { return alice.State(id) == v1::JOB_STATE_RUNNING; }, seconds(60)));
  v1::Job job;
  ASSERT_TRUE(alice.Get(id, &job).ok());
  EXPECT_EQ(job.owner(), "alice");
  EXPECT_EQ(alice.List(), std::vector<int64_t>{id});
  // Bob: not listed, and a foreign job answers exactly as a missing one does.
  EXPECT_TRUE(bob.List().empty());
  const int64_t missing = id + 1000;
  const auto denial = [](const grpc::Status& st, int64_t job_id) {
    return st.error_code() == grpc::StatusCode::PERMISSION_DENIED &&
           st.error_message() == "job " + std::to_string(job_id) + " does not exist or is not yours";
  };
  EXPECT_TRUE(denial(bob.Get(id, &job), id));
  EXPECT_TRUE(denial(bob.Get(missing, &job), missing));
  EXPECT_TRUE(denial(bob.Logs(id), id));
  EXPECT_TRUE(denial(bob.Cancel(id), id));
  {
    v1::GetMetricsRequest req;
    req.set_job_id(id);
    v1::GetMetricsResponse resp;
    EXPECT_TRUE(denial(bob.stub->GetMetrics(bob.Ctx().get(), req, &resp), id));
    v1::ListCheckpointsRequest creq;
    creq.set_job_id(id);
    v1::ListCheckpointsResponse cresp;
    EXPECT_TRUE(denial(bob.stub->ListCheckpoints(bob.Ctx().get(), creq, &cresp), id));
    v1::ListNodesResponse nodes;
    ASSERT_TRUE(bob.stub->ListNodes(bob.Ctx().get(), v1::ListNodesRequest{}, &nodes).ok());
    for (const auto& n : nodes.nodes()) EXPECT_EQ(n.job_ids_size(), 0) << "bob sees where alice's job runs";
  }
  std::string out;
  EXPECT_EQ(Cli({"cancel", std::to_string(id), "--controller", d->address(), "--token", bob.token}, &out), 1) << out;
  EXPECT_EQ(alice.State(id), v1::JOB_STATE_RUNNING);
  // The admin sees it and cancels it.
  EXPECT_EQ(root.List(), std::vector<int64_t>{id});
  ASSERT_TRUE(root.Logs(id).ok());
  ASSERT_TRUE(root.Cancel(id).ok());
  ASSERT_TRUE(WaitFor([&] { return alice.State(id) == v1::JOB_STATE_CANCELED; }, seconds(60)));
}

// A rank presenting another job's credential reports nothing into that job.
TEST_F(SecurityTest, RankWithAnotherJobsCredentialIsRefused) {
  auto d = StartShared();
  ASSERT_EQ(d->Admin({"user", "add", "alice"}), 0);
  ASSERT_EQ(d->Admin({"user", "add", "bob"}), 0);
  const Client alice(d->address(), d->Issue({"token", "create", "alice"}));
  const Client bob(d->address(), d->Issue({"token", "create", "bob"}));
  int64_t a = 0, b = 0;
  ASSERT_TRUE(alice.Submit(UserConfig(100000), &a).ok());
  ASSERT_TRUE(bob.Submit(UserConfig(100000), &b).ok());
  v1::Job job;
  ASSERT_TRUE(WaitFor([&] { return alice.Get(a, &job).ok() && job.ranks_size() == 1 && job.ranks(0).pid() > 0 &&
                                   bob.State(b) == v1::JOB_STATE_RUNNING; },
                      seconds(60)));
  // Alice's rank's own credential, as a process of hers would hold it.
  const std::string environ = ReadFile("/proc/" + std::to_string(job.ranks(0).pid()) + "/environ");
  const std::string key = "DSV3_JOB_CREDENTIAL=";
  const size_t at = environ.find(key);
  ASSERT_NE(at, std::string::npos);
  const std::string credential = environ.substr(at + key.size(), environ.find('\0', at) - at - key.size());
  auto worker = v1::WorkerReports::NewStub(grpc::CreateChannel(d->address(), grpc::InsecureChannelCredentials()));
  v1::Job bobs;
  ASSERT_TRUE(bob.Get(b, &bobs).ok());
  v1::ReportMetricsRequest req;
  req.mutable_ref()->set_job_id(b);
  req.mutable_ref()->set_attempt(bobs.attempt());
  req.mutable_ref()->set_rank(0);
  req.mutable_ref()->set_credential(credential);
  auto* sample = req.add_samples();
  sample->set_name("loss");
  sample->set_step(1);
  sample->set_value(-42);
  v1::Ack ack;
  grpc::ClientContext ctx;
  const grpc::Status s = worker->ReportMetrics(&ctx, req, &ack);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_EQ(s.error_message(), "wrong credential for job " + std::to_string(b));
  v1::GetMetricsRequest mreq;
  mreq.set_job_id(b);
  mreq.add_names("loss");
  v1::GetMetricsResponse mresp;
  ASSERT_TRUE(bob.stub->GetMetrics(bob.Ctx().get(), mreq, &mresp).ok());
  for (const auto& series : mresp.series()) {
    for (const auto& p : series.points()) EXPECT_NE(p.value(), -42);
  }
  // With its own credential, a rank still records only checkpoints inside its job's folder.
  v1::ReportCheckpointRequest ckpt;
  ckpt.mutable_ref()->set_job_id(a);
  ckpt.mutable_ref()->set_attempt(job.attempt());
  ckpt.mutable_ref()->set_rank(0);
  ckpt.mutable_ref()->set_credential(credential);
  ckpt.set_step(1);
  ckpt.set_path(bobs.checkpoint_dir() + "/checkpoint_1");
  grpc::ClientContext ckpt_ctx;
  const grpc::Status cs = worker->ReportCheckpoint(&ckpt_ctx, ckpt, &ack);
  EXPECT_EQ(cs.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << cs.error_message();
  EXPECT_NE(cs.error_message().find("is not inside the job's checkpoint folder"), std::string::npos);
  ASSERT_TRUE(alice.Cancel(a).ok());
  ASSERT_TRUE(bob.Cancel(b).ok());
}

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
