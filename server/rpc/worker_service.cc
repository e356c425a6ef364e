#include "rpc/services.h"

namespace dsv3::server {
namespace {

RankRef Ref(const v1::RankRef& r) { return {r.job_id(), r.attempt(), r.rank(), r.credential()}; }

RankState FromProto(const v1::RankProgress& p) {
  RankState s;
  s.reported = true;
  s.step = p.step();
  s.micro_step = p.micro_step();
  s.phase = p.phase().substr(0, 32);
  s.last_step_seconds = p.last_step_seconds();
  s.last_busy_seconds = p.last_busy_seconds();
  for (const auto& g : p.groups()) {
    GroupState x;
    x.name = g.name().substr(0, 64);
    x.size = g.size();
    x.entered = g.entered();
    x.completed = g.completed();
    x.last_op = g.last_op().substr(0, 32);
    x.waiting_seq = g.waiting_seq();
    x.waiting_op = g.waiting_op().substr(0, 32);
    x.waiting_since_ms = g.waiting_since_unix_ms();
    s.groups.push_back(std::move(x));
  }
  return s;
}

}  // namespace

grpc::Status WorkerService::RegisterRank(grpc::ServerContext*, const v1::RegisterRankRequest* req,
                                         v1::RegisterRankResponse* resp) {
  auto interval = manager_.RegisterRank(Ref(req->ref()), req->pid(), req->host());
  if (!interval.ok()) return ToGrpc(interval.status());
  resp->set_heartbeat_interval_ms(*interval);
  return grpc::Status::OK;
}

grpc::Status WorkerService::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                                      v1::HeartbeatResponse* resp) {
  if (req->progress().groups_size() > 64) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "progress.groups: at most 64");
  }
  const RankState progress = FromProto(req->progress());
  auto reply = manager_.Heartbeat(Ref(req->ref()), req->step(), req->has_progress() ? &progress : nullptr);
  if (!reply.ok()) return ToGrpc(reply.status());
  resp->set_command(static_cast<v1::RankCommand>(static_cast<int>(reply->command)));
  resp->set_dump_request(reply->dump_request);
  return grpc::Status::OK;
}

grpc::Status WorkerService::ReportMetrics(grpc::ServerContext*, const v1::ReportMetricsRequest* req, v1::Ack*) {
  std::vector<MetricRow> rows;
  rows.reserve(req->samples_size());
  for (const auto& s : req->samples()) {
    if (s.name().empty() || s.name().size() > 200) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "samples: a metric name must have 1..200 characters");
    }
    rows.push_back({s.step(), s.name(), s.value(), s.time_unix_ms() > 0 ? s.time_unix_ms() : NowMs()});
  }
  return ToGrpc(manager_.ReportMetrics(Ref(req->ref()), rows));
}

grpc::Status WorkerService::ReportCheckpoint(grpc::ServerContext*, const v1::ReportCheckpointRequest* req, v1::Ack*) {
  if (req->path().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "path: empty");
  CheckpointRecord c{req->step(), req->path(), req->reason(), std::nullopt, NowMs()};
  return ToGrpc(manager_.ReportCheckpoint(Ref(req->ref()), c));
}

grpc::Status WorkerService::ReportEvaluation(grpc::ServerContext*, const v1::ReportEvaluationRequest* req, v1::Ack*) {
  EvaluationRecord e;
  e.step = req->step();
  e.loss = req->loss();
  e.perplexity = req->perplexity();
  e.tokens = req->tokens();
  for (const auto& [k, v] : req->per_source_loss()) e.per_source_loss[k] = v;
  e.sample = req->sample();
  e.time_ms = NowMs();
  return ToGrpc(manager_.ReportEvaluation(Ref(req->ref()), e));
}

grpc::Status WorkerService::ShipLogs(grpc::ServerContext*, const v1::ShipLogsRequest* req, v1::Ack*) {
  std::vector<std::string> lines(req->lines().begin(), req->lines().end());
  return ToGrpc(manager_.ShipLogs(Ref(req->ref()), lines));
}

grpc::Status WorkerService::ReportEnd(grpc::ServerContext*, const v1::ReportEndRequest* req, v1::Ack*) {
  const int outcome = req->outcome();
  if (outcome < 0 || outcome > 3) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "outcome: " + std::to_string(outcome) + " is unknown");
  }
  return ToGrpc(manager_.ReportEnd(Ref(req->ref()), static_cast<RankOutcome>(outcome), req->step(), req->message()));
}

grpc::Status WorkerService::ReportDiagnostics(grpc::ServerContext*, const v1::ReportDiagnosticsRequest* req, v1::Ack*) {
  if (req->text().size() > (1u << 20)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "text: at most 1 MiB");
  }
  return ToGrpc(manager_.ReportDiagnostics(Ref(req->ref()), req->dump_request(), req->text()));
}

}  // namespace dsv3::server
