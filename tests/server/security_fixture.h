// What the shared-controller suites have in common: certificates from deploy/gen-certs.sh,
// one user's connection (a stub and the token every call carries), and a fixture that starts
// a dsv3d with the shared corpus as a read root.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "controller_fixture.h"

namespace dsv3::test {

// A certificate set made by deploy/gen-certs.sh into `dir`.
inline fs::path MakeCerts(const fs::path& dir) {
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
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
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

}  // namespace dsv3::test
