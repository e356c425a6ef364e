#include "dsv3/server/daemon.h"

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

#include "dsv3/server/host_util.h"
#include "dsv3/server/job_manager.h"
#include "dsv3/server/job_store.h"
#include "dsv3/server/local_allocator.h"
#include "dsv3/server/slurm_allocator.h"
#include "dsv3/server/static_allocator.h"
#include "http_server.h"
#include "prometheus.h"
#include "rpc_stats.h"
#include "services.h"

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
  if (auto found = FindSiblingBinary("dsv3-worker")) return *found;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return absl::NotFoundError("no dsv3-worker next to dsv3d (" + self.parent_path().string() +
                             "); build it (cmake --build build --target dsv3-worker) or pass --worker PATH");
}

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1" || host == "[::1]";
}

// The agents' join credential: given, or made once and kept in the state dir (0600).
absl::StatusOr<std::string> AgentToken(const std::string& given_file, const std::string& state_dir) {
  const std::string path = given_file.empty() ? state_dir + "/agent.token" : given_file;
  std::string token;
  std::ifstream(path) >> token;
  if (!token.empty()) return token;
  if (!given_file.empty()) return absl::NotFoundError("--agent-token-file: " + path + " is missing or empty");
  try {
    token = RandomHex(24);
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return absl::UnavailableError("cannot create " + path);
  const std::string line = token + "\n";
  const bool ok = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  close(fd);
  if (!ok) return absl::UnavailableError("cannot write " + path);
  return token;
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
  std::unique_ptr<ControllerService> controller;
  std::unique_ptr<WorkerService> worker;
  std::unique_ptr<grpc::Server> server;
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
absl::StatusOr<std::unique_ptr<Allocator>> MakeAllocators(const DaemonOptions& o, const std::string& state_dir,
                                                          StaticAllocator*& agents) {
  const auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  SlurmOptions so;
  so.poll_interval = ms(o.slurm_poll_s > 0 ? o.slurm_poll_s : 1);
  // Only a Slurm daemon waits for the cluster at start; the others take jobs that ask for
  // Slurm when its tools are installed, and sbatch's answer says the rest.
  so.probe = o.allocator == "slurm";
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
    auto token = AgentToken(o.agent_token_file, state_dir);
    if (!token.ok()) return token.status();
    st.join_token = *token;
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
    primary = MakeLocalAllocator(slots);
  }
  return MakeRoutingAllocator(std::move(primary), std::move(slurm), why_no_slurm);
}

}  // namespace

Daemon::Daemon(std::unique_ptr<Parts> parts) : p_(std::move(parts)) {}
Daemon::~Daemon() { Shutdown(); }

int Daemon::grpc_port() const { return p_->grpc_port; }
int Daemon::http_port() const { return p_->http ? p_->http->port() : 0; }

std::string Daemon::Summary() const {
  return "gRPC on " + p_->grpc_host + ":" + std::to_string(grpc_port()) + ", HTTP /metrics on " + p_->http_host + ":" +
         std::to_string(http_port()) + ", state in " + p_->options.state_dir + ", allocator " +
         p_->allocator->Name() + " with " + std::to_string(p_->allocator->TotalSlots()) + " slot(s)" +
         (p_->agents != nullptr ? "; agents join with --token-file " +
                                      (p_->options.agent_token_file.empty() ? p_->options.state_dir + "/agent.token"
                                                                            : p_->options.agent_token_file)
                                : "") +
         (p_->options.allocator != "local" && IsLoopbackHost(p_->rank_host)
              ? "; note: ranks report to " + p_->rank_host +
                    ", which only this host reaches (listen on 0.0.0.0 or give --advertise for multi-host)"
              : "");
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options) {
  auto p = std::make_unique<Parts>();
  p->options = options;
  auto grpc_addr = ParseHostPort("--listen", options.listen);
  if (!grpc_addr.ok()) return grpc_addr.status();
  auto http_addr = ParseHostPort("--http-listen", options.http_listen);
  if (!http_addr.ok()) return http_addr.status();
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

  auto allocator = MakeAllocators(p->options, state_dir, p->agents);
  if (!allocator.ok()) return allocator.status();
  p->allocator = std::move(*allocator);

  p->grpc_host = grpc_addr->host;
  p->http_host = http_addr->host;
  ManagerOptions mo;
  mo.state_dir = state_dir;
  mo.worker_path = *worker;
  const auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  mo.heartbeat_interval = ms(options.heartbeat_interval_s);
  mo.heartbeat_timeout = ms(options.heartbeat_timeout_s);
  mo.startup_timeout = ms(options.startup_timeout_s);
  mo.grace_period = ms(options.grace_period_s);
  p->manager = std::make_unique<JobManager>(*p->store, *p->allocator, mo);
  const std::string base_dir =
      options.work_dir.empty() ? fs::current_path().string() : fs::absolute(options.work_dir).lexically_normal().string();
  p->controller = std::make_unique<ControllerService>(*p->store, *p->manager, *p->allocator, LocalUser(), base_dir);
  p->worker = std::make_unique<WorkerService>(*p->manager);

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string grpc_target =
      (grpc_addr->host.find(':') != std::string::npos ? "[" + grpc_addr->host + "]" : grpc_addr->host) + ":" +
      std::to_string(grpc_addr->port);
  builder.AddListeningPort(grpc_target, grpc::InsecureServerCredentials(), &p->grpc_port);
  builder.RegisterService(p->controller.get());
  builder.RegisterService(p->worker.get());
  if (p->agents != nullptr) builder.RegisterService(p->agents->service());
  builder.SetMaxReceiveMessageSize(16 << 20);
  // gRPC sets SO_REUSEPORT by default: a second dsv3d would then share the port silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<RpcStatsInterceptorFactory>(p->rpc_stats));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  p->server = builder.BuildAndStart();
  if (!p->server || p->grpc_port == 0) {
    return absl::UnavailableError("--listen: cannot listen on " + grpc_target + " (address in use or not local)");
  }
  // Ranks dial the controller where it listens. A wildcard address means loopback for local
  // ranks and this host's name for ranks elsewhere, unless --advertise names the host.
  const bool wildcard = grpc_addr->host == "0.0.0.0" || grpc_addr->host == "::";
  std::string rank_host = wildcard ? (options.allocator == "local" ? "127.0.0.1" : HostName())
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
  auto http = StartHttpServer(http_addr->host, http_addr->port, [=](const std::string& target) -> HttpResponse {
    const std::string path = target.substr(0, target.find('?'));
    if (path == "/metrics") {
      return {200, "text/plain; version=0.0.4; charset=utf-8",
              RenderMetrics(*store_ptr, *manager_ptr, *allocator_ptr, *stats_ptr)};
    }
    if (path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
    return {404, "text/plain; charset=utf-8", "not found: try /metrics or /healthz\n"};
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
