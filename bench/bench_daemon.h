// A real dsv3d for the benches that time jobs end to end (launch_bench, hang_bench): started
// on loopback with a state folder of its own, its Controller stub, and jobs submitted and
// followed to their end.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "child_process.h"
#include "dsv3/v1/controller.grpc.pb.h"
#include "test_util.h"

namespace dsv3::bench {

struct BenchDaemon {
  std::unique_ptr<test::Child> process;
  std::string address;
  std::unique_ptr<v1::Controller::Stub> stub;
};

// dsv3d --state-dir `state` --slots `slots` plus `extra` flags, with heartbeats every 0.5 s;
// nullopt (and its log in `error`) when it does not come up within 30 s.
inline std::optional<BenchDaemon> StartBenchDaemon(const std::filesystem::path& state, int slots,
                                                   const std::vector<std::string>& extra, std::string& error) {
  std::vector<std::string> args = {DSV3D_PATH, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                                   "--state-dir", state.string(), "--slots", std::to_string(slots), "--worker",
                                   DSV3_WORKER_PATH, "--heartbeat-interval", "0.5"};
  args.insert(args.end(), extra.begin(), extra.end());
  BenchDaemon d;
  d.process = std::make_unique<test::Child>(args, state / "dsv3d.log");
  if (!test::WaitFor([&] { return !test::ReadFile(state / "dsv3d.json").empty(); }, std::chrono::seconds(30))) {
    error = "dsv3d did not start: " + test::ReadFile(state / "dsv3d.log");
    return std::nullopt;
  }
  d.address = nlohmann::json::parse(test::ReadFile(state / "dsv3d.json"))["grpc"];
  d.stub = v1::Controller::NewStub(grpc::CreateChannel(d.address, grpc::InsecureChannelCredentials()));
  return d;
}

// Submits `config` on `ranks` ranks and waits (up to 300 s) until the job has ended; nullopt
// (and why in `error`) when the submit is refused.
inline std::optional<v1::Job> SubmitAndWait(v1::Controller::Stub& stub, const nlohmann::json& config, int ranks,
                                            std::string& error) {
  grpc::ClientContext sctx;
  v1::SubmitJobRequest req;
  req.set_config_json(config.dump());
  req.set_num_ranks(ranks);
  v1::SubmitJobResponse resp;
  if (const grpc::Status s = stub.SubmitJob(&sctx, req, &resp); !s.ok()) {
    error = "submit failed: " + s.error_message();
    return std::nullopt;
  }
  v1::Job job;
  test::WaitFor([&] {
    grpc::ClientContext ctx;
    v1::GetJobRequest g;
    g.set_job_id(resp.job().id());
    return stub.GetJob(&ctx, g, &job).ok() && (job.state() == v1::JOB_STATE_COMPLETED ||
                                                job.state() == v1::JOB_STATE_FAILED ||
                                                job.state() == v1::JOB_STATE_CANCELED);
  }, std::chrono::seconds(300));
  return job;
}

}  // namespace dsv3::bench
