#include "daemon.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "allocators/local_allocator.h"
#include "allocators/slurm_allocator.h"
#include "allocators/static_allocator.h"
#include "dsv3/procs/client_tls.h"
#include "dsv3/procs/host.h"
#include "http/http_server.h"
#include "http/prometheus.h"
#include "web/web_frontend.h"
#include "jobs/job_manager.h"
#include "rpc/rpc_stats.h"
#include "rpc/services.h"
#include "rpc/tls.h"
#include "store/job_store.h"

namespace dsv3::server {
namespace fs = std::filesystem;

namespace {

struct HostPort {
  std::string host;
  int port = 0;
};

absl::StatusOr<HostPort> ParseHostPort(const std::string& flag, const std::string& value) {
  const auto colon = value.rfind(':');
  if (colon == std::string::npos || colon + 1 == value.size()) {
    return absl::InvalidArgumentError(flag + ": '" + value + "' is not HOST:PORT (e.g. 127.0.0.1:50051)");
  }
  HostPort hp;
  hp.host = value.substr(0, colon);
  if (hp.host.size() >= 2 && hp.host.front() == '[' && hp.host.back() == ']') hp.host = hp.host.substr(1, hp.host.size() - 2);
  const std::string port = value.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 || std::stoi(port) > 65535) {
    return absl::InvalidArgumentError(flag + ": port '" + port + "' is not a number in 0..65535");
  }
  hp.port = std::stoi(port);
  if (hp.host.empty()) return absl::InvalidArgumentError(flag + ": '" + value + "' has no host");
  return hp;
}

std::string LocalUser() {
  if (const passwd* pw = getpwuid(getuid())) return pw->pw_name;
  return "uid" + std::to_string(getuid());
}

absl::StatusOr<std::string> FindWorker(const std::string& given) {
  if (!given.empty()) {
    if (access(given.c_str(), X_OK) != 0) {
      return absl::NotFoundError("--worker: " + given + " is not an executable file");
    }
    return fs::absolute(given).lexically_normal().string();
  }
  std::error_code ec;
  if (auto found = procs::FindSiblingBinary("dsv3-worker")) return *found;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return absl::NotFoundError("no dsv3-worker next to dsv3d (" + self.parent_path().string() +
                             "); build it (cmake --build build --target dsv3-worker) or pass --worker PATH");
}

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1" || host == "[::1]";
}

}  // namespace

struct Daemon::Parts {
  DaemonOptions options;
  int lock_fd = -1;
  std::unique_ptr<JobStore> store;
  std::unique_ptr<Allocator> allocator;
  StaticAllocator* agents = nullptr;  // inside `allocator` when --allocator static
  std::string rank_host;              // where ranks dial the controller
  std::unique_ptr<JobManager> manager;
  RpcStats rpc_stats;
  std::unique_ptr<Authenticator> auth;
  CallRegistry calls;
  std::vector<std::string> warnings;
  std::unique_ptr<ControllerService> controller;
  std::unique_ptr<WorkerService> worker;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<web::WebFrontend> web;
  std::unique_ptr<HttpServer> http;
  int grpc_port = 0;
  std::string grpc_host, http_host;
  bool shut_down = false;

  ~Parts() {
    if (lock_fd >= 0) close(lock_fd);
  }
};

namespace {

// The daemon's allocator: the primary one (--allocator), wrapped so that jobs whose config
// sets slurm.enabled go to Slurm when this host can reach it. `agents` is set to the static
// allocator inside, whose gRPC service the daemon serves.
absl::StatusOr<std::unique_ptr<Allocator>> MakeAllocators(const DaemonOptions& o, const JobStore& store,
                                                          StaticAllocator*& agents) {
  const auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  SlurmOptions so;
  so.poll_interval = ms(o.slurm_poll_s > 0 ? o.slurm_poll_s : 1);
  // Only a Slurm daemon waits for the cluster at start; the others take jobs that ask for
  // Slurm when its tools are installed, and sbatch's answer says the rest.
  so.probe = o.allocator == "slurm";
  so.max_rank_log_bytes = o.max_rank_log_bytes;
  std::unique_ptr<Allocator> slurm;
  std::string why_no_slurm;
  if (auto made = MakeSlurmAllocator(so); made.ok()) {
    slurm = std::move(*made);
  } else {
    if (o.allocator == "slurm") return absl::FailedPreconditionError("--allocator slurm: " + std::string(made.status().message()));
    why_no_slurm = std::string(made.status().message());
  }
  std::unique_ptr<Allocator> primary;
  if (o.allocator == "slurm") {
    primary = std::move(slurm);
  } else if (o.allocator == "static") {
    StaticOptions st;
    st.agent_of_token = [&store](const std::string& token) -> absl::StatusOr<std::string> {
      const auto rec = store.FindToken(Sha256Hex(token));
      if (!rec || rec->kind != "agent") {
        return absl::UnauthenticatedError(
            "wrong or revoked agent credential (on the controller host, `dsv3d agent add NAME` issues one; give it "
            "to dsv3-agent with --token-file)");
      }
      return rec->subject;
    };
    if (!o.hosts_file.empty()) {
      auto hosts = ReadHostsFile(o.hosts_file);
      if (!hosts.ok()) return hosts.status();
      st.hosts = *hosts;
    }
    st.heartbeat_interval = ms(o.heartbeat_interval_s);
    st.heartbeat_timeout = ms(o.heartbeat_timeout_s);
    auto hub = MakeStaticAllocator(st);
    agents = hub.get();
    primary = std::move(hub);
  } else {
    const int slots = o.slots > 0 ? o.slots : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    primary = MakeLocalAllocator(slots, o.max_rank_log_bytes);
  }
  return MakeRoutingAllocator(std::move(primary), std::move(slurm), why_no_slurm);
}

// The flags that need no file or socket to check.
absl::Status CheckFlags(const DaemonOptions& options) {
  if (options.allocator != "local" && options.allocator != "static" && options.allocator != "slurm") {
    return absl::InvalidArgumentError("--allocator: '" + options.allocator + "' is not one of local, static, slurm");
  }
  if (!options.hosts_file.empty() && options.allocator != "static") {
    return absl::InvalidArgumentError("--hosts: only the static allocator reads a hosts file (--allocator static)");
  }
  if (options.slots < 0) return absl::InvalidArgumentError("--slots: must be >= 1 (0 = one per CPU core)");
  for (const auto& [flag, v] : {std::pair<const char*, double>{"--heartbeat-interval", options.heartbeat_interval_s},
                                {"--heartbeat-timeout", options.heartbeat_timeout_s},
                                {"--startup-timeout", options.startup_timeout_s},
                                {"--grace-period", options.grace_period_s}}) {
    if (!(v > 0)) return absl::InvalidArgumentError(std::string(flag) + ": must be a positive number of seconds");
  }
  if (options.heartbeat_timeout_s <= options.heartbeat_interval_s) {
    return absl::InvalidArgumentError("--heartbeat-timeout must exceed --heartbeat-interval");
  }
  if (options.max_rank_log_bytes < 0) {
    return absl::InvalidArgumentError("--max-rank-log-bytes: " + std::to_string(options.max_rank_log_bytes) +
                                      " must be >= 0 (0 = no cap)");
  }
  if (options.metrics_retention_h < 0) {
    return absl::InvalidArgumentError("--metrics-retention: " + std::to_string(options.metrics_retention_h) +
                                      " must be >= 0 hours (0 = keep every point)");
  }
  if (options.max_jobs_per_user < 0 || options.max_slots_per_user < 0) {
    return absl::InvalidArgumentError("--max-jobs-per-user / --max-slots-per-user: must be >= 0 (0 = no limit)");
  }
  if (options.max_config_bytes < 1024 || options.max_log_lines < 1 || !(options.http_timeout_s > 0)) {
    return absl::InvalidArgumentError(
        "--max-config-bytes must be >= 1024, --max-log-lines >= 1 and --http-timeout a positive number of seconds");
  }
  return absl::OkStatus();
}

// TLS when given a certificate; plaintext only on loopback, or anywhere with --insecure
// (which adds a warning).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const DaemonOptions& options,
                                                                              const std::string& grpc_host,
                                                                              std::vector<std::string>& warnings) {
  // Plaintext is for loopback: beyond it, tokens and configs would cross the network readable.
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty() || !options.tls_key.empty()) {
    auto tls = MakeServerTls({options.tls_cert, options.tls_key, options.tls_client_ca});
    if (!tls.ok()) return tls.status();
    credentials = *tls;
    if (!options.tls_ca.empty()) {
      if (auto ca = procs::ReadPemFile("--tls-ca", options.tls_ca); !ca.ok()) return ca.status();
    }
  } else {
    if (!options.tls_client_ca.empty() || !options.tls_ca.empty() || options.http_tls) {
      return absl::InvalidArgumentError(
          "--tls-client-ca, --tls-ca and --http-tls need TLS: give --tls-cert and --tls-key");
    }
    if (!IsLoopbackHost(grpc_host)) {
      if (!options.insecure) {
        return absl::FailedPreconditionError(
            "--listen " + options.listen +
            " is not loopback and TLS is off: tokens and configs would cross the network in plaintext. Serve TLS "
            "(--tls-cert FILE --tls-key FILE; deploy/gen-certs.sh makes a test set) or pass --insecure to accept "
            "plaintext");
      }
      warnings.push_back("--insecure: serving plaintext gRPC on " + options.listen +
                         "; tokens, configs and logs cross the network readable by anyone on it");
    }
  }
  return credentials;
}

std::chrono::milliseconds Ms(double seconds) { return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)); }

ManagerOptions ManagerOptionsFor(const DaemonOptions& options, const std::string& state_dir, const std::string& worker) {
  ManagerOptions mo;
  mo.state_dir = state_dir;
  mo.worker_path = worker;
  mo.heartbeat_interval = Ms(options.heartbeat_interval_s);
  mo.heartbeat_timeout = Ms(options.heartbeat_timeout_s);
  mo.startup_timeout = Ms(options.startup_timeout_s);
  mo.grace_period = Ms(options.grace_period_s);
  mo.metrics_retention = std::chrono::hours(options.metrics_retention_h);
  // What ranks trust when they dial a TLS controller.
  if (!options.tls_cert.empty()) {
    mo.controller_ca = fs::absolute(options.tls_ca.empty() ? options.tls_cert : options.tls_ca).string();
  }
  return mo;
}

ServiceLimits LimitsFor(const DaemonOptions& options, const std::string& state_dir) {
  ServiceLimits limits;
  limits.max_config_bytes = options.max_config_bytes;
  limits.max_log_lines_per_request = options.max_log_lines;
  limits.max_jobs_per_user = options.max_jobs_per_user;
  limits.max_slots_per_user = options.max_slots_per_user;
  limits.work_root =
      options.work_root.empty() ? state_dir + "/work" : fs::absolute(options.work_root).lexically_normal().string();
  limits.jobs_root = state_dir + "/jobs";
  for (const auto& r : options.read_roots) limits.read_roots.push_back(fs::absolute(r).lexically_normal().string());
  return limits;
}

}  // namespace

Daemon::Daemon(std::unique_ptr<Parts> parts) : p_(std::move(parts)) {}
Daemon::~Daemon() { Shutdown(); }

int Daemon::grpc_port() const { return p_->grpc_port; }
int Daemon::http_port() const { return p_->http ? p_->http->port() : 0; }

std::string Daemon::Summary() const {
  return "gRPC on " + p_->grpc_host + ":" + std::to_string(grpc_port()) + ", HTTP" +
         std::string(p_->options.http_tls ? "S" : "") + " /metrics and the dashboard on " + p_->http_host + ":" +
         std::to_string(http_port()) + ", state in " + p_->options.state_dir + ", allocator " +
         p_->allocator->Name() + " with " + std::to_string(p_->allocator->TotalSlots()) + " slot(s)" +
         (p_->agents != nullptr ? "; agents join with a credential from `dsv3d agent add NAME`" : "") +
         (p_->options.tls_cert.empty() ? ""
          : p_->options.tls_client_ca.empty() ? "; TLS"
                                              : "; TLS with client certificates") +
         (p_->options.allocator != "local" && IsLoopbackHost(p_->rank_host)
              ? "; note: ranks report to " + p_->rank_host +
                    ", which only this host reaches (listen on 0.0.0.0 or give --advertise for multi-host)"
              : "");
}

std::vector<std::string> Daemon::Warnings() const { return p_->warnings; }

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options) {
  auto p = std::make_unique<Parts>();
  p->options = options;
  auto grpc_addr = ParseHostPort("--listen", options.listen);
  if (!grpc_addr.ok()) return grpc_addr.status();
  auto http_addr = ParseHostPort("--http-listen", options.http_listen);
  if (!http_addr.ok()) return http_addr.status();
  if (absl::Status s = CheckFlags(options); !s.ok()) return s;
  auto credentials = ServerCredentialsFor(options, grpc_addr->host, p->warnings);
  if (!credentials.ok()) return credentials.status();
  auto worker = FindWorker(options.worker_path);
  if (!worker.ok()) return worker.status();

  std::error_code ec;
  fs::create_directories(options.state_dir, ec);
  if (ec) return absl::UnavailableError("--state-dir: cannot create " + options.state_dir + ": " + ec.message());
  p->options.state_dir = fs::canonical(options.state_dir).string();
  const std::string& state_dir = p->options.state_dir;
  // One dsv3d per state dir: two would both supervise the same jobs.
  p->lock_fd = open((state_dir + "/dsv3d.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (p->lock_fd < 0 || flock(p->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError("--state-dir: " + state_dir +
                                         " is in use by another dsv3d (dsv3d.lock is held)");
  }
  auto store = JobStore::Open(state_dir + "/dsv3.db");
  if (!store.ok()) return store.status();
  p->store = std::move(*store);

  auto allocator = MakeAllocators(p->options, *p->store, p->agents);
  if (!allocator.ok()) return allocator.status();
  p->allocator = std::move(*allocator);

  p->grpc_host = grpc_addr->host;
  p->http_host = http_addr->host;
  const ManagerOptions mo = ManagerOptionsFor(options, state_dir, *worker);
  p->manager = std::make_unique<JobManager>(*p->store, *p->allocator, mo);
  const std::string base_dir =
      options.work_dir.empty() ? fs::current_path().string() : fs::absolute(options.work_dir).lexically_normal().string();
  // A loopback-only dsv3d without users trusts its callers as the local user: they are on
  // this host. Anything else needs a token on every call.
  p->auth = std::make_unique<Authenticator>(*p->store, LocalUser(), IsLoopbackHost(grpc_addr->host),
                                            !options.tls_client_ca.empty());
  if (!IsLoopbackHost(grpc_addr->host) && p->store->CountUsers() == 0) {
    p->warnings.push_back("no users yet: every call needs a token; on this host run `dsv3d user add NAME --state-dir " +
                          state_dir + "` and `dsv3d token create NAME --state-dir " + state_dir + "`");
  }
  const ServiceLimits limits = LimitsFor(options, state_dir);
  p->controller =
      std::make_unique<ControllerService>(*p->store, *p->manager, *p->allocator, p->calls, base_dir, limits);
  p->worker = std::make_unique<WorkerService>(*p->manager);

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string grpc_target =
      (grpc_addr->host.find(':') != std::string::npos ? "[" + grpc_addr->host + "]" : grpc_addr->host) + ":" +
      std::to_string(grpc_addr->port);
  builder.AddListeningPort(grpc_target, *credentials, &p->grpc_port);
  builder.RegisterService(p->controller.get());
  builder.RegisterService(p->worker.get());
  if (p->agents != nullptr) builder.RegisterService(p->agents->service());
  builder.SetMaxReceiveMessageSize(16 << 20);
  // gRPC sets SO_REUSEPORT by default: a second dsv3d would then share the port silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<RpcStatsInterceptorFactory>(p->rpc_stats));
  interceptors.push_back(std::make_unique<AuthInterceptorFactory>(*p->auth, p->calls));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  p->server = builder.BuildAndStart();
  if (!p->server || p->grpc_port == 0) {
    return absl::UnavailableError("--listen: cannot listen on " + grpc_target + " (address in use or not local)");
  }
  // Ranks dial the controller where it listens. A wildcard address means loopback for local
  // ranks and this host's name for ranks elsewhere, unless --advertise names the host.
  const bool wildcard = grpc_addr->host == "0.0.0.0" || grpc_addr->host == "::";
  std::string rank_host = wildcard ? (options.allocator == "local" ? "127.0.0.1" : procs::HostName())
                                   : grpc_target.substr(0, grpc_target.rfind(':'));
  if (!options.advertise.empty()) rank_host = options.advertise;
  p->manager->SetControllerAddress(rank_host + ":" + std::to_string(p->grpc_port));
  p->rank_host = rank_host;

  const auto fail = [&](const absl::Status& s) {
    p->server->Shutdown(std::chrono::system_clock::now());
    return s;
  };
  if (absl::Status s = p->manager->Recover(); !s.ok()) return fail(s);
  JobStore* store_ptr = p->store.get();
  JobManager* manager_ptr = p->manager.get();
  Allocator* allocator_ptr = p->allocator.get();
  RpcStats* stats_ptr = &p->rpc_stats;
  // The dashboard's API calls the Controller service in-process, so its authentication and
  // ownership rules are the ones that answer.
  web::WebOptions web_options;
  web_options.pass_untokened = IsLoopbackHost(http_addr->host);
  web_options.https = options.http_tls;
  web_options.chartjs_path = options.chartjs;
  // Under mTLS the HTTPS endpoint checks the browser's certificate itself; the API's calls say so.
  if (options.http_tls && !options.tls_client_ca.empty()) {
    web_options.in_process_secret = p->auth->in_process_secret();
  }
  p->web = std::make_unique<web::WebFrontend>(p->server->InProcessChannel(grpc::ChannelArguments()), web_options);
  const web::WebFrontend* web_ptr = p->web.get();
  HttpLimits http_limits;
  http_limits.request_timeout = Ms(options.http_timeout_s);
  std::optional<HttpTls> http_tls;
  if (options.http_tls) http_tls = HttpTls{options.tls_cert, options.tls_key, options.tls_client_ca};
  auto http = StartHttpServer(http_addr->host, http_addr->port, http_limits, http_tls,
                              [=](const HttpRequest& request) -> HttpResponse {
    const std::string path = request.target.substr(0, request.target.find('?'));
    if (auto page = web_ptr->Handle(request)) return std::move(*page);
    if (request.method == "POST") return {405, "text/plain; charset=utf-8", "POST is for /api/v1 only\n", {}};
    if (path == "/metrics") {
      return {200, "text/plain; version=0.0.4; charset=utf-8",
              RenderMetrics(*store_ptr, *manager_ptr, *allocator_ptr, *stats_ptr), {}};
    }
    if (path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n", {}};
    return {404, "text/plain; charset=utf-8", "not found: try /, /metrics, /healthz or /api/v1/jobs\n", {}};
  });
  if (!http.ok()) return fail(http.status());
  p->http = std::move(*http);
  p->manager->Start();

  // Where a script finds the ports (useful with port 0).
  nlohmann::json info = {{"pid", getpid()},
                         {"grpc", rank_host + ":" + std::to_string(p->grpc_port)},
                         {"http", http_addr->host + ":" + std::to_string(p->http->port())}};
  std::ofstream(state_dir + "/dsv3d.json") << info.dump() << "\n";
  return std::unique_ptr<Daemon>(new Daemon(std::move(p)));
}

void Daemon::Shutdown() {
  if (!p_ || p_->shut_down) return;
  p_->shut_down = true;
  if (p_->http) p_->http->Stop();
  if (p_->controller) p_->controller->Shutdown();
  if (p_->agents) p_->agents->Disconnect();
  if (p_->server) p_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (p_->manager) p_->manager->Stop();
}

}  // namespace dsv3::server
