// A controller shared by several users, end to end: TLS and mTLS, tokens on every call,
// job ownership and per-job rank credentials. Every scenario runs a real dsv3d; certificates
// come from deploy/gen-certs.sh, as an operator's would. Paths, quotas, hostile requests and
// slow clients: security_limits_e2e_test.cc (the same binary).
#include <sys/stat.h>

#include <chrono>

#include "dsv3/v1/worker.grpc.pb.h"
#include "security_fixture.h"

namespace dsv3::test {
namespace {

using std::chrono::seconds;

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

// Under mTLS the HTTPS port asks for a client certificate too; with one, the dashboard's API
// answers (the in-process calls say the certificate was checked), without one the handshake fails.
TEST_F(SecurityTest, MutualTlsRefusesACallWithoutAClientCertificate) {
  const fs::path pki = MakeCerts(dir_.path() / "pki");
  Dsv3d d(dir_.path() / "state", 1, 20,
          {"--tls-cert", (pki / "server.pem").string(), "--tls-key", (pki / "server.key").string(), "--tls-client-ca",
           (pki / "ca.pem").string(), "--http-tls"});
  d.Start();
  const auto https = [&](const std::string& path, const std::string& cert) {
    int rc = 0;
    const std::string load = cert.empty() ? "" : "ctx.load_cert_chain('" + (pki / (cert + ".pem")).string() + "', '" +
                                                     (pki / (cert + ".key")).string() + "'); ";
    std::string out = Shell("/usr/bin/python3 -c \"import ssl, urllib.request; ctx = ssl.create_default_context(cafile='" +
                                (pki / "ca.pem").string() + "'); " + load + "print(urllib.request.urlopen('https://" +
                                d.http() + path + "', context=ctx).read().decode(), end='')\"",
                            &rc);
    return std::make_pair(rc, out);
  };
  const auto [who_rc, who] = https("/api/v1/whoami", "alice");
  EXPECT_EQ(who_rc, 0) << who;
  EXPECT_NE(who.find("\"trustedLocal\":true"), std::string::npos) << who;  // loopback, no users
  const auto [bare_rc, bare] = https("/api/v1/whoami", "");
  EXPECT_NE(bare_rc, 0) << bare;  // no certificate: the handshake fails
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

}  // namespace
}  // namespace dsv3::test
