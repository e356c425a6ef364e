// The gRPC services dsv3d serves: dsv3.v1.Controller (users, dsv3ctl, other-language
// clients) and dsv3.v1.WorkerReports (training ranks). Both are thin: they check and convert
// requests, call the JobManager / JobStore, and map absl::Status to grpc::Status once.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "dsv3/v1/controller.grpc.pb.h"
#include "dsv3/v1/worker.grpc.pb.h"
#include "jobs/job_manager.h"
#include "rpc/auth.h"
#include "store/job_store.h"

namespace dsv3::server {

grpc::Status ToGrpc(const absl::Status& s);

struct ServiceLimits {
  int64_t max_config_bytes = 4 << 20;
  int max_log_lines_per_request = 100000;
  // Defaults for users without their own limits (0 = none); the trusted local user has none.
  int max_jobs_per_user = 0, max_slots_per_user = 0;
  // Confinement of users' paths: <work_root>/<user> is each user's folder; read_roots are
  // shared inputs; jobs_root is <state-dir>/jobs.
  std::string work_root, jobs_root;
  std::vector<std::string> read_roots;
};

class ControllerService final : public dsv3::v1::Controller::Service {
 public:
  // `default_base_dir`: where relative input paths of remote clients resolve.
  // `calls`: what the auth interceptor found for each call (auth.h).
  ControllerService(JobStore& store, JobManager& manager, const Allocator& allocator, const CallRegistry& calls,
                    std::string default_base_dir, ServiceLimits limits = {});
  // Ends every StreamLogs follow loop (graceful shutdown).
  void Shutdown() { shutting_down_.store(true); }

  grpc::Status SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest*, v1::SubmitJobResponse*) override;
  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest*, v1::Job*) override;
  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest*, v1::ListJobsResponse*) override;
  grpc::Status CancelJob(grpc::ServerContext*, const v1::CancelJobRequest*, v1::CancelJobResponse*) override;
  grpc::Status StreamLogs(grpc::ServerContext*, const v1::StreamLogsRequest*, grpc::ServerWriter<v1::LogChunk>*) override;
  grpc::Status GetMetrics(grpc::ServerContext*, const v1::GetMetricsRequest*, v1::GetMetricsResponse*) override;
  grpc::Status ListCheckpoints(grpc::ServerContext*, const v1::ListCheckpointsRequest*,
                               v1::ListCheckpointsResponse*) override;
  grpc::Status CheckpointJob(grpc::ServerContext*, const v1::CheckpointJobRequest*,
                             v1::CheckpointJobResponse*) override;
  grpc::Status DumpJob(grpc::ServerContext*, const v1::DumpJobRequest*, v1::DumpJobResponse*) override;
  grpc::Status GetDiagnostics(grpc::ServerContext*, const v1::GetDiagnosticsRequest*,
                              v1::GetDiagnosticsResponse*) override;
  grpc::Status ValidateConfig(grpc::ServerContext*, const v1::ValidateConfigRequest*,
                              v1::ValidateConfigResponse*) override;
  grpc::Status ListNodes(grpc::ServerContext*, const v1::ListNodesRequest*, v1::ListNodesResponse*) override;
  grpc::Status WhoAmI(grpc::ServerContext*, const v1::WhoAmIRequest*, v1::WhoAmIResponse*) override;

 private:
  void FillJob(const JobRecord& job, bool detail, bool include_config, v1::Job* out) const;
  // The job, when the caller may see it: its owner or an admin. A missing and a foreign job
  // answer alike (PERMISSION_DENIED) to anyone who is not an admin.
  absl::StatusOr<JobRecord> JobFor(const Caller& caller, int64_t job_id) const;

  JobStore& store_;
  JobManager& manager_;
  const Allocator& allocator_;
  const CallRegistry& calls_;
  const std::string default_base_dir_;
  const ServiceLimits limits_;
  std::atomic<bool> shutting_down_{false};
};

class WorkerService final : public dsv3::v1::WorkerReports::Service {
 public:
  explicit WorkerService(JobManager& manager) : manager_(manager) {}

  grpc::Status RegisterRank(grpc::ServerContext*, const v1::RegisterRankRequest*, v1::RegisterRankResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*, v1::HeartbeatResponse*) override;
  grpc::Status ReportMetrics(grpc::ServerContext*, const v1::ReportMetricsRequest*, v1::Ack*) override;
  grpc::Status ReportCheckpoint(grpc::ServerContext*, const v1::ReportCheckpointRequest*, v1::Ack*) override;
  grpc::Status ReportEvaluation(grpc::ServerContext*, const v1::ReportEvaluationRequest*, v1::Ack*) override;
  grpc::Status ShipLogs(grpc::ServerContext*, const v1::ShipLogsRequest*, v1::Ack*) override;
  grpc::Status ReportEnd(grpc::ServerContext*, const v1::ReportEndRequest*, v1::Ack*) override;
  grpc::Status ReportDiagnostics(grpc::ServerContext*, const v1::ReportDiagnosticsRequest*, v1::Ack*) override;

 private:
  JobManager& manager_;
};

}  // namespace dsv3::server
