#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "dsv3/common/message_log.h"
#include "jobs/job_config.h"
#include "rpc/services.h"

namespace dsv3::server {
namespace {

constexpr auto kFollowPoll = std::chrono::milliseconds(100);
constexpr size_t kMaxReadPerPass = 1 << 20;
constexpr size_t kMaxLinesPerChunk = 512;

bool IsLoopbackPeer(const std::string& peer) {
  return peer.rfind("ipv4:127.", 0) == 0 || peer.rfind("ipv6:[::1]", 0) == 0 || peer.rfind("unix:", 0) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return !path.empty() && path[0] == '/' && stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void FillProblems(const std::vector<FieldProblem>& list, google::protobuf::RepeatedPtrField<v1::FieldError>* out) {
  for (const auto& p : list) {
    auto* e = out->Add();
    e->set_path(p.path);
    e->set_message(p.message);
    e->set_code(p.code);
  }
}

// INVALID_ARGUMENT whose message lists every error and whose details carry them typed.
grpc::Status InvalidConfig(const SubmitOutcome& o) {
  v1::ValidateConfigResponse details;
  details.set_valid(false);
  FillProblems(o.errors, details.mutable_errors());
  FillProblems(o.warnings, details.mutable_warnings());
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(o.status.message()),
                      details.SerializeAsString());
}

// Byte offset where the last `n` lines of the file start.
int64_t OffsetOfLastLines(const std::string& path, int n) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return 0;
  const int64_t size = f.tellg();
  int64_t pos = size;
  int newlines = 0;
  char buf[4096];
  // A trailing newline ends the last line; it does not start a new one.
  int64_t end = size;
  while (pos > 0) {
    const int64_t chunk = std::min<int64_t>(pos, sizeof(buf));
    pos -= chunk;
    f.seekg(pos);
    f.read(buf, chunk);
    for (int64_t i = chunk - 1; i >= 0; --i) {
      if (buf[i] != '\n' || pos + i == end - 1) continue;
      if (++newlines == n) return pos + i + 1;
    }
  }
  return 0;
}

struct LogTail {
  int rank = 0;
  std::string path;
  int64_t offset = 0;
  std::string partial;     // a line not yet terminated
  int64_t last_time = 0;   // of the newest line with a time (lines without one inherit it)
  int64_t since = 0;       // lines before this time are skipped (0: none)
};

// One line of a rank log into `out`, with its time and without the stamp it began with;
// false when it is older than the tail's `since`.
bool AddLine(LogTail& t, std::string_view text, v1::LogChunk* out) {
  const msg::StampedLine stamped = msg::SplitLogStamp(text);
  if (stamped.unix_ms) t.last_time = *stamped.unix_ms;
  if (t.since > 0 && t.last_time < t.since) return false;
  auto* line = out->add_lines();
  line->set_rank(t.rank);
  line->set_text(std::string(stamped.text));
  line->set_time_unix_ms(t.last_time);
  return true;
}

// Reads what was appended since the last pass; complete lines go to `out`. Returns how many
// lines were read (sent or skipped as older than `since`).
size_t ReadNewLines(LogTail& t, v1::LogChunk* out, bool flush_partial) {
  std::ifstream f(t.path, std::ios::binary);
  size_t lines = 0;
  if (f) {
    f.seekg(0, std::ios::end);
    const int64_t size = f.tellg();
    if (size < t.offset) t.offset = 0;  // truncated: start over
    const size_t want = static_cast<size_t>(std::min<int64_t>(size - t.offset, kMaxReadPerPass));
    if (want > 0) {
      std::string buf(want, '\0');
      f.seekg(t.offset);
      f.read(buf.data(), static_cast<std::streamsize>(want));
      t.offset += static_cast<int64_t>(want);
      size_t start = 0;
      for (size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
        AddLine(t, t.partial + buf.substr(start, nl - start), out);
        t.partial.clear();
        ++lines;
      }
      t.partial += buf.substr(start);
    }
  }
  if (flush_partial && !t.partial.empty()) {
    AddLine(t, t.partial, out);
    t.partial.clear();
    ++lines;
  }
  return lines;
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

ControllerService::ControllerService(JobStore& store, JobManager& manager, const Allocator& allocator,
                                     const CallRegistry& calls, std::string default_base_dir, ServiceLimits limits)
    : store_(store),
      manager_(manager),
      allocator_(allocator),
      calls_(calls),
      default_base_dir_(std::move(default_base_dir)),
      limits_(std::move(limits)) {}

absl::StatusOr<JobRecord> ControllerService::JobFor(const Caller& caller, int64_t job_id) const {
  auto job = store_.GetJob(job_id);
  if (caller.admin) {
    if (!job) return absl::NotFoundError("no job " + std::to_string(job_id));
    return *job;
  }
  if (!job || job->owner != caller.user) {
    return absl::PermissionDeniedError("job " + std::to_string(job_id) + " does not exist or is not yours");
  }
  return *job;
}

// The caller of a Controller call, as the auth interceptor found it; returns on refusal.
#define DSV3_REQUIRE_CALLER(ctx)                          \
  const auto caller_or = calls_.Find(ctx);                \
  if (!caller_or.ok()) return ToGrpc(caller_or.status()); \
  const Caller& caller = *caller_or

// The job the caller may see; returns on refusal.
#define DSV3_REQUIRE_JOB(job_id)                    \
  const auto job_or = JobFor(caller, job_id);       \
  if (!job_or.ok()) return ToGrpc(job_or.status()); \
  const JobRecord& job_record = *job_or

void ControllerService::FillJob(const JobRecord& j, bool detail, bool include_config, v1::Job* out) const {
  out->set_id(j.id);
  out->set_name(j.name);
  out->set_owner(j.owner);
  out->set_state(static_cast<v1::JobState>(static_cast<int>(j.state)));
  out->set_state_reason(j.state_reason);
  out->set_num_ranks(j.num_ranks);
  out->set_priority(j.priority);
  out->set_attempt(j.attempt);
  out->set_restarts(j.restarts);
  out->set_max_restarts(j.max_restarts);
  out->set_total_steps(j.total_steps);
  out->set_created_unix_ms(j.created_ms);
  out->set_started_unix_ms(j.started_ms);
  out->set_finished_unix_ms(j.finished_ms);
  out->set_job_dir(j.job_dir);
  out->set_output_dir(j.output_dir);
  out->set_checkpoint_dir(j.checkpoint_dir);
  out->set_tensorboard_dir(j.tensorboard_dir);
  out->set_experiment_name(j.experiment_name);
  const JobProgress p = manager_.Progress(j);
  out->set_step(p.step);
  if (auto it = p.latest.find("loss"); it != p.latest.end()) out->set_loss(it->second);
  if (auto it = p.latest.find("tokens_per_s"); it != p.latest.end()) out->set_tokens_per_second(it->second);
  if (p.eta_seconds && !IsTerminal(j.state)) out->set_eta_seconds(*p.eta_seconds);
  if (p.val_loss) out->set_val_loss(*p.val_loss);
  out->set_last_checkpoint(p.last_checkpoint);
  out->set_last_checkpoint_step(p.last_checkpoint_step);
  if (!detail) return;
  for (const auto& e : store_.History(j.id)) {
    auto* h = out->add_history();
    h->set_state(static_cast<v1::JobState>(static_cast<int>(e.state)));
    h->set_reason(e.reason);
    h->set_time_unix_ms(e.time_ms);
    h->set_attempt(e.attempt);
  }
  for (const auto& r : p.ranks) {
    auto* ri = out->add_ranks();
    ri->set_rank(r.rank);
    ri->set_attempt(j.attempt);
    ri->set_pid(r.pid);
    ri->set_host(r.host);
    ri->set_log_path(r.log_path);
    ri->set_state(r.state);
    ri->set_exit_code(r.exit_code);
    ri->set_last_heartbeat_unix_ms(r.last_heartbeat_ms);
    ri->set_phase(r.phase);
    ri->set_step(r.step);
    ri->set_step_seconds(r.step_seconds);
    ri->set_busy_seconds(r.busy_seconds);
    ri->set_straggler(r.straggler);
    ri->set_busy_ratio(r.busy_ratio);
  }
  for (const auto& e : store_.Evaluations(j.id)) {
    auto* ev = out->add_evaluations();
    ev->set_step(e.step);
    ev->set_loss(e.loss);
    ev->set_perplexity(e.perplexity);
    ev->set_tokens(e.tokens);
    for (const auto& [k, v] : e.per_source_loss) (*ev->mutable_per_source_loss())[k] = v;
    ev->set_sample(e.sample);
    ev->set_time_unix_ms(e.time_ms);
  }
  for (const auto& a : store_.Allocations(j.id)) {
    auto* al = out->add_allocations();
    al->set_attempt(a.attempt);
    al->set_allocator(a.allocator);
    al->set_external_id(a.external_id);
    al->set_state(a.state);
    al->set_reason(a.reason);
    al->set_updated_unix_ms(a.updated_ms);
  }
  if (include_config) out->set_config_json(j.config_json);
  // Where the weights came from (checkpointing.init_from_hf), from the resolved config.
  const nlohmann::json config = nlohmann::json::parse(j.config_json, nullptr, false);
  const nlohmann::json::json_pointer init("/checkpointing/init_from_hf");
  if (config.is_object() && config.contains(init) && config.at(init).is_string()) {
    out->set_weights_from(config.at(init).get<std::string>());
  }
  if (j.state == JobState::kFailed) {
    // The end of each rank's log: usually the error that failed the job.
    for (int r = 0; r < j.num_ranks; ++r) {
      LogTail t{r, manager_.LogPath(j, r), OffsetOfLastLines(manager_.LogPath(j, r), 20), "", 0, 0};
      v1::LogChunk chunk;
      ReadNewLines(t, &chunk, true);
      for (const auto& l : chunk.lines()) {
        out->add_last_log_lines((j.num_ranks > 1 ? "[rank " + std::to_string(r) + "] " : "") + l.text());
      }
    }
  }
}

grpc::Status ControllerService::SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req,
                                          v1::SubmitJobResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  if (static_cast<int64_t>(req->config_json().size()) > limits_.max_config_bytes) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "config_json: " + std::to_string(req->config_json().size()) + " bytes exceeds the limit of " +
                            std::to_string(limits_.max_config_bytes));
  }
  SubmitRequest r;
  r.config_json = req->config_json();
  r.name = req->name();
  r.owner = caller.user;
  r.resume_from = req->resume_from();
  r.num_ranks = req->num_ranks();  // 0: what the config implies
  r.priority = req->priority();
  r.dry_run = req->dry_run();
  r.config_path = req->config_path();
  // The client's folder means something only on this machine, and only to its own user.
  r.base_dir = caller.trusted_local && IsLoopbackPeer(ctx->peer()) && IsDirectory(req->working_dir())
                   ? req->working_dir()
                   : default_base_dir_;
  PathPolicy paths;
  if (!caller.trusted_local) {
    // A user of a shared controller: their own folder is the base of relative inputs, and
    // what the job writes and reads stays inside it (admins included: a typo must not
    // overwrite another user's files either).
    paths.confined = true;
    paths.work_root = limits_.work_root + "/" + caller.user;
    paths.read_roots = limits_.read_roots;
    paths.jobs_root = limits_.jobs_root;
    const std::string user = caller.user;
    const bool admin = caller.admin;
    paths.owns_job = [this, user, admin](int64_t id) {
      const auto j = store_.GetJob(id);
      return j && (admin || j->owner == user);
    };
    std::error_code ec;
    std::filesystem::create_directories(paths.work_root, ec);
    if (ec) return grpc::Status(grpc::StatusCode::INTERNAL, "cannot create your work root " + paths.work_root);
    r.base_dir = paths.work_root;
    r.paths = &paths;
    r.max_jobs = caller.max_jobs > 0 ? caller.max_jobs : limits_.max_jobs_per_user;
    r.max_slots = caller.max_slots > 0 ? caller.max_slots : limits_.max_slots_per_user;
  }
  const SubmitOutcome o = req->dry_run() ? manager_.Validate(r) : manager_.Submit(r);
  if (o.status.code() == absl::StatusCode::kInvalidArgument) return InvalidConfig(o);
  if (!o.status.ok()) return ToGrpc(o.status);
  FillProblems(o.warnings, resp->mutable_warnings());
  resp->set_plan(o.plan);
  resp->set_resolved_config_json(o.resolved_json);
  if (!req->dry_run()) {
    auto job = store_.GetJob(o.job.id);
    if (job) FillJob(*job, false, false, resp->mutable_job());
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  DSV3_REQUIRE_JOB(req->job_id());
  FillJob(job_record, true, req->include_config(), resp);
  return grpc::Status::OK;
}

grpc::Status ControllerService::ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                                         v1::ListJobsResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  JobFilter f;
  for (int s : req->states()) {
    if (s < 1 || s > 7) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "states: " + std::to_string(s) + " is not a JobState (1..7)");
    }
    f.states.push_back(static_cast<JobState>(s));
  }
  // Others' jobs are not listed, not even as an empty answer to an owner filter.
  f.owner = caller.admin ? req->owner() : caller.user;
  if (!caller.admin && !req->owner().empty() && req->owner() != caller.user) return grpc::Status::OK;
  f.name_contains = req->name_contains();
  f.limit = req->limit() > 0 ? std::min(req->limit(), 10000) : 100;
  for (const auto& j : store_.ListJobs(f)) FillJob(j, false, false, resp->add_jobs());
  return grpc::Status::OK;
}

grpc::Status ControllerService::CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req,
                                          v1::CancelJobResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  DSV3_REQUIRE_JOB(req->job_id());
  (void)job_record;
  auto job = manager_.Cancel(req->job_id(), req->reason());
  if (!job.ok()) return ToGrpc(job.status());
  auto fresh = store_.GetJob(req->job_id());
  FillJob(fresh ? *fresh : *job, false, false, resp->mutable_job());
  return grpc::Status::OK;
}

grpc::Status ControllerService::CheckpointJob(grpc::ServerContext* ctx, const v1::CheckpointJobRequest* req,
                                              v1::CheckpointJobResponse*) {
  DSV3_REQUIRE_CALLER(ctx);
  DSV3_REQUIRE_JOB(req->job_id());
  (void)job_record;
  return ToGrpc(manager_.RequestCheckpoint(req->job_id()));
}

grpc::Status ControllerService::DumpJob(grpc::ServerContext* ctx, const v1::DumpJobRequest* req,
                                        v1::DumpJobResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  DSV3_REQUIRE_JOB(req->job_id());
  (void)job_record;
  auto dir = manager_.RequestDump(req->job_id());
  if (!dir.ok()) return ToGrpc(dir.status());
  resp->set_dir(*dir);
  return grpc::Status::OK;
}

grpc::Status ControllerService::GetDiagnostics(grpc::ServerContext* ctx, const v1::GetDiagnosticsRequest* req,
                                               v1::GetDiagnosticsResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  DSV3_REQUIRE_JOB(req->job_id());
  namespace fs = std::filesystem;
  const fs::path root = fs::path(job_record.job_dir) / "diagnostics";
  std::error_code ec;
  std::vector<int> attempts;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (it->is_directory() && !name.empty() && name.find_first_not_of("0123456789") == std::string::npos &&
        name.size() < 9) {
      attempts.push_back(std::stoi(name));
    }
  }
  std::sort(attempts.begin(), attempts.end());
  for (int a : attempts) resp->add_attempts(a);
  int attempt = req->attempt();
  if (attempt == 0 && !attempts.empty()) attempt = attempts.back();
  if (attempt == 0 || std::find(attempts.begin(), attempts.end(), attempt) == attempts.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "job " + std::to_string(req->job_id()) + " has no diagnostics" +
                            (req->attempt() > 0 ? " for attempt " + std::to_string(req->attempt()) : "") +
                            ": the watchdog found no hang, and no dump was taken (dsv3ctl dump)");
  }
  resp->set_attempt(attempt);
  const fs::path dir = root / std::to_string(attempt);
  std::ifstream summary(dir / "summary.txt");
  std::ostringstream text;
  text << summary.rdbuf();
  resp->set_summary(summary ? text.str() : "");
  std::vector<std::pair<std::string, int64_t>> files;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file()) files.emplace_back(it->path().string(), static_cast<int64_t>(it->file_size()));
  }
  std::sort(files.begin(), files.end());
  for (const auto& [path, bytes] : files) {
    auto* f = resp->add_files();
    f->set_path(path);
    f->set_bytes(bytes);
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::StreamLogs(grpc::ServerContext* ctx, const v1::StreamLogsRequest* req,
                                           grpc::ServerWriter<v1::LogChunk>* writer) {
  DSV3_REQUIRE_CALLER(ctx);
  DSV3_REQUIRE_JOB(req->job_id());
  const JobRecord* job = &job_record;
  if (req->has_rank() && (req->rank() < 0 || req->rank() >= job->num_ranks)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "rank: " + std::to_string(req->rank()) + " is not a rank of job " + std::to_string(job->id) +
                            " (0.." + std::to_string(job->num_ranks - 1) + ")");
  }
  if (req->since_unix_ms() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "since_unix_ms: " + std::to_string(req->since_unix_ms()) + " is negative");
  }
  if (req->tail_lines() < 0 || req->tail_lines() > limits_.max_log_lines_per_request) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "tail_lines: " + std::to_string(req->tail_lines()) + " is outside 0.." +
                            std::to_string(limits_.max_log_lines_per_request));
  }
  std::vector<LogTail> tails;
  for (int r = 0; r < job->num_ranks; ++r) {
    if (req->has_rank() && r != req->rank()) continue;
    LogTail t{r, manager_.LogPath(*job, r), 0, "", 0, req->since_unix_ms()};
    // A request reads at most the last max_log_lines_per_request lines of what is there.
    const int tail = req->tail_lines() > 0 ? req->tail_lines() : limits_.max_log_lines_per_request;
    t.offset = OffsetOfLastLines(t.path, tail);
    tails.push_back(std::move(t));
  }
  bool ended = IsTerminal(job->state);
  while (true) {
    size_t lines = 0;
    v1::LogChunk chunk;
    for (auto& t : tails) {
      // A stream that ends (not following, or the job is over) flushes the last partial line.
      lines += ReadNewLines(t, &chunk, !req->follow() || ended);
      if (chunk.lines_size() >= static_cast<int>(kMaxLinesPerChunk)) {
        if (!writer->Write(chunk)) return grpc::Status::OK;  // the client went away
        chunk.Clear();
      }
    }
    if (chunk.lines_size() > 0 && !writer->Write(chunk)) return grpc::Status::OK;
    if (lines > 0) continue;  // drain before deciding to stop or wait
    if (!req->follow() || ended) return grpc::Status::OK;
    if (ctx->IsCancelled() || shutting_down_.load()) return grpc::Status::OK;
    std::this_thread::sleep_for(kFollowPoll);
    // Decide "ended" only after one more full read pass, so no line written before the
    // job's end is missed.
    const auto state = store_.GetState(job->id);
    ended = !state || IsTerminal(*state);
  }
}

grpc::Status ControllerService::GetMetrics(grpc::ServerContext* ctx, const v1::GetMetricsRequest* req,
                                           v1::GetMetricsResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  DSV3_REQUIRE_JOB(req->job_id());
  (void)job_record;
  if (req->max_points() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "max_points: must be 0 (all) or positive");
  }
  const std::vector<std::string> names(req->names().begin(), req->names().end());
  const auto rows = store_.Metrics(req->job_id(), names, req->since_step());
  std::map<std::string, std::vector<const MetricRow*>> by_name;
  std::vector<std::string> order;
  for (const auto& r : rows) {
    if (by_name[r.name].empty()) order.push_back(r.name);
    by_name[r.name].push_back(&r);
  }
  for (const auto& name : order) {
    const auto& pts = by_name[name];
    auto* series = resp->add_series();
    series->set_name(name);
    const size_t n = pts.size();
    const size_t keep = req->max_points() > 0 ? std::min<size_t>(n, req->max_points()) : n;
    for (size_t i = 0; i < keep; ++i) {
      // Evenly spaced, the first and the last point always kept.
      const size_t idx = keep == 1 ? n - 1 : i * (n - 1) / (keep - 1);
      auto* p = series->add_points();
      p->set_step(pts[idx]->step);
      p->set_value(pts[idx]->value);
      p->set_time_unix_ms(pts[idx]->time_ms);
    }
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::ListCheckpoints(grpc::ServerContext* ctx, const v1::ListCheckpointsRequest* req,
                                                v1::ListCheckpointsResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  DSV3_REQUIRE_JOB(req->job_id());
  (void)job_record;
  struct stat st {};
  for (const auto& c : store_.Checkpoints(req->job_id())) {
    if (stat(c.path.c_str(), &st) != 0) continue;  // removed by retention
    auto* out = resp->add_checkpoints();
    out->set_step(c.step);
    out->set_path(c.path);
    out->set_reason(c.reason);
    if (c.val_loss) out->set_val_loss(*c.val_loss);
    out->set_time_unix_ms(c.time_ms);
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::ValidateConfig(grpc::ServerContext* ctx, const v1::ValidateConfigRequest* req,
                                               v1::ValidateConfigResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  (void)caller;
  if (static_cast<int64_t>(req->config_json().size()) > limits_.max_config_bytes) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "config_json: " + std::to_string(req->config_json().size()) + " bytes exceeds the limit of " +
                            std::to_string(limits_.max_config_bytes));
  }
  SubmitRequest r;
  r.config_json = req->config_json();
  r.num_ranks = req->num_ranks();
  r.base_dir = default_base_dir_;
  const SubmitOutcome o = manager_.Validate(r);
  resp->set_valid(o.errors.empty());
  FillProblems(o.errors, resp->mutable_errors());
  FillProblems(o.warnings, resp->mutable_warnings());
  resp->set_resolved_config_json(o.resolved_json);
  return grpc::Status::OK;
}

}  // namespace dsv3::server

namespace dsv3::server {

grpc::Status ControllerService::ListNodes(grpc::ServerContext* ctx, const v1::ListNodesRequest*,
                                          v1::ListNodesResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  resp->set_allocator(allocator_.Name());
  for (const NodeInfo& n : allocator_.Nodes()) {
    auto* node = resp->add_nodes();
    node->set_name(n.name);
    node->set_address(n.address);
    node->set_state(n.state);
    node->set_slots(n.slots);
    node->set_slots_used(n.used);
    node->set_last_heartbeat_unix_ms(n.last_heartbeat_ms);
    for (int64_t id : n.jobs) {
      // Which jobs run where is shown to their owners and admins only.
      if (caller.admin || JobFor(caller, id).ok()) node->add_job_ids(id);
    }
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::WhoAmI(grpc::ServerContext* ctx, const v1::WhoAmIRequest*, v1::WhoAmIResponse* resp) {
  DSV3_REQUIRE_CALLER(ctx);
  resp->set_user(caller.user);
  resp->set_admin(caller.admin);
  resp->set_trusted_local(caller.trusted_local);
  return grpc::Status::OK;
}

}  // namespace dsv3::server
