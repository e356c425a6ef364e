// libFuzzer target: every request handler of dsv3d's gRPC services, called in process the
// way gRPC calls them, with a request decoded from the input and a caller picked by it
// (alice, who owns job 1; bob, who owns nothing; an admin). Each call returns a status
// with a message when it refuses; none crashes or trips a sanitizer, and no caller but the
// owner or an admin ever gets past the ownership check of alice's job.
//
// Input: byte 0 picks the method, byte 1 the caller, the rest is the request message.
// Built only when the project compiler is clang (the sanitizer build, deploy/test.sh).
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "allocators/local_allocator.h"
#include "rpc/services.h"

namespace dsv3::server {
namespace {

struct World {
  std::string dir;
  std::unique_ptr<JobStore> store;
  std::unique_ptr<Allocator> allocator;
  std::unique_ptr<JobManager> manager;
  CallRegistry calls;
  std::unique_ptr<ControllerService> controller;
  std::unique_ptr<WorkerService> worker;
  int64_t alice_job = 0;

  World() {
    // protobuf logs every string field that is not UTF-8; the fuzzer makes many.
    google::protobuf::SetLogHandler(nullptr);
    char tmpl[] = "/tmp/dsv3-request-fuzz-XXXXXX";
    dir = mkdtemp(tmpl);
    static std::string to_remove;  // job folders of the fuzz run, removed when it exits
    to_remove = dir;
    std::atexit([] { std::filesystem::remove_all(to_remove); });
    store = std::move(*JobStore::Open(":memory:"));
    allocator = MakeLocalAllocator(2);
    ManagerOptions mo;
    mo.state_dir = dir;
    mo.worker_path = "/bin/false";
    manager = std::make_unique<JobManager>(*store, *allocator, mo);
    if (!manager->Recover().ok()) __builtin_trap();
    ServiceLimits limits;
    limits.work_root = dir + "/work";
    limits.jobs_root = dir + "/jobs";
    controller = std::make_unique<ControllerService>(*store, *manager, *allocator, calls, dir, limits);
    worker = std::make_unique<WorkerService>(*manager);
    // Alice's job, queued (the manager's supervision never runs here, so nothing starts).
    std::ifstream f(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_nano.json");
    std::ostringstream config;
    config << f.rdbuf();
    SubmitRequest r;
    r.config_json = config.str();
    r.owner = "alice";
    r.num_ranks = 1;
    r.base_dir = dir;
    const SubmitOutcome o = manager->Submit(r);
    if (!o.status.ok()) __builtin_trap();
    alice_job = o.job.id;
  }
};

World& TheWorld() {
  static World* w = new World();
  return *w;
}

template <class Req>
bool Decode(const uint8_t* data, size_t size, Req* req) {
  return req->ParseFromArray(data, static_cast<int>(size));
}

void Check(const grpc::Status& s) {
  if (!s.ok() && s.error_message().empty()) __builtin_trap();  // every refusal says why
}

}  // namespace
}  // namespace dsv3::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3::server;
  namespace v1 = dsv3::v1;
  if (size < 2) return 0;
  World& w = TheWorld();
  const uint8_t method = data[0] % 20;
  const Caller callers[] = {{"alice", false, false, 0, 0}, {"bob", false, false, 0, 0}, {"root", true, false, 0, 0}};
  const Caller& caller = callers[data[1] % 3];
  data += 2;
  size -= 2;
  grpc::ServerContext ctx;
  w.calls.Set(&ctx, caller);
  ControllerService& c = *w.controller;
  WorkerService& wk = *w.worker;
  // A job id the fuzzer names; alice's job whenever it names 0.
  const auto job_id = [&](int64_t id) { return id == 0 ? w.alice_job : id; };
  grpc::Status s;
  switch (method) {
    case 0: {
      v1::SubmitJobRequest req;
      if (!Decode(data, size, &req)) break;
      req.set_dry_run(true);  // validation, quotas and paths; nothing queued
      v1::SubmitJobResponse resp;
      s = c.SubmitJob(&ctx, &req, &resp);
      break;
    }
    case 1: {
      v1::GetJobRequest req;
      if (!Decode(data, size, &req)) break;
      req.set_job_id(job_id(req.job_id()));
      v1::Job resp;
      s = c.GetJob(&ctx, &req, &resp);
      if (req.job_id() == w.alice_job && caller.user == "bob" && s.error_code() != grpc::StatusCode::PERMISSION_DENIED) {
        __builtin_trap();  // a foreign job answered
      }
      break;
    }
    case 2: {
      v1::ListJobsRequest req;
      if (!Decode(data, size, &req)) break;
      v1::ListJobsResponse resp;
      s = c.ListJobs(&ctx, &req, &resp);
      for (const auto& j : resp.jobs()) {
        if (!caller.admin && j.owner() != caller.user) __builtin_trap();
      }
      break;
    }
    case 3: {
      v1::CancelJobRequest req;
      if (!Decode(data, size, &req)) break;
      req.set_job_id(job_id(req.job_id()));
      if (req.job_id() == w.alice_job && caller.user != "bob") break;  // keep alice's job for the others
      v1::CancelJobResponse resp;
      s = c.CancelJob(&ctx, &req, &resp);
      if (req.job_id() == w.alice_job && s.ok()) __builtin_trap();  // bob cancelled alice's job
      break;
    }
    case 4: {
      v1::GetMetricsRequest req;
      if (!Decode(data, size, &req)) break;
      req.set_job_id(job_id(req.job_id()));
      v1::GetMetricsResponse resp;
      s = c.GetMetrics(&ctx, &req, &resp);
      break;
    }
    case 5: {
      v1::ListCheckpointsRequest req;
      if (!Decode(data, size, &req)) break;
      req.set_job_id(job_id(req.job_id()));
      v1::ListCheckpointsResponse resp;
      s = c.ListCheckpoints(&ctx, &req, &resp);
      break;
    }
    case 6: {
      v1::CheckpointJobRequest req;
      if (!Decode(data, size, &req)) break;
      req.set_job_id(job_id(req.job_id()));
      v1::CheckpointJobResponse resp;
      s = c.CheckpointJob(&ctx, &req, &resp);
      break;
    }
    case 7: {
      v1::ValidateConfigRequest req;
      if (!Decode(data, size, &req)) break;
      v1::ValidateConfigResponse resp;
      s = c.ValidateConfig(&ctx, &req, &resp);
      break;
    }
    case 8: {
      v1::ListNodesResponse resp;
      s = c.ListNodes(&ctx, nullptr, &resp);
      break;
    }
    case 9: {
      v1::WhoAmIResponse resp;
      s = c.WhoAmI(&ctx, nullptr, &resp);
      if (resp.user() != caller.user) __builtin_trap();
      break;
    }
    case 10: {
      v1::RegisterRankRequest req;
      if (!Decode(data, size, &req)) break;
      v1::RegisterRankResponse resp;
      s = wk.RegisterRank(&ctx, &req, &resp);
      break;
    }
    case 11: {
      v1::HeartbeatRequest req;
      if (!Decode(data, size, &req)) break;
      v1::HeartbeatResponse resp;
      s = wk.Heartbeat(&ctx, &req, &resp);
      break;
    }
    case 12: {
      v1::ReportMetricsRequest req;
      if (!Decode(data, size, &req)) break;
      v1::Ack resp;
      s = wk.ReportMetrics(&ctx, &req, &resp);
      break;
    }
    case 13: {
      v1::ReportCheckpointRequest req;
      if (!Decode(data, size, &req)) break;
      v1::Ack resp;
      s = wk.ReportCheckpoint(&ctx, &req, &resp);
      break;
    }
    case 14: {
      v1::ReportEvaluationRequest req;
      if (!Decode(data, size, &req)) break;
      v1::Ack resp;
      s = wk.ReportEvaluation(&ctx, &req, &resp);
      break;
    }
    case 15: {
      v1::ShipLogsRequest req;
      if (!Decode(data, size, &req)) break;
      v1::Ack resp;
      s = wk.ShipLogs(&ctx, &req, &resp);
      break;
    }
    case 16: {
      v1::ReportDiagnosticsRequest req;
      if (!Decode(data, size, &req)) break;
      v1::Ack resp;
      s = wk.ReportDiagnostics(&ctx, &req, &resp);
      if (s.ok()) __builtin_trap();  // no credential, no dump written
      break;
    }
    case 17: {
      v1::DumpJobRequest req;
      if (!Decode(data, size, &req)) break;
      req.set_job_id(job_id(req.job_id()));
      v1::DumpJobResponse resp;
      s = c.DumpJob(&ctx, &req, &resp);
      break;
    }
    case 18: {
      v1::GetDiagnosticsRequest req;
      if (!Decode(data, size, &req)) break;
      req.set_job_id(job_id(req.job_id()));
      v1::GetDiagnosticsResponse resp;
      s = c.GetDiagnostics(&ctx, &req, &resp);
      break;
    }
    default: {
      v1::ReportEndRequest req;
      if (!Decode(data, size, &req)) break;
      v1::Ack resp;
      s = wk.ReportEnd(&ctx, &req, &resp);
      // Without the job's credential no report is ever accepted.
      if (s.ok()) __builtin_trap();
      break;
    }
  }
  Check(s);
  w.calls.Erase(&ctx);
  return 0;
}
