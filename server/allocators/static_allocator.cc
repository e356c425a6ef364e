#include "allocators/static_allocator.h"

#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "dsv3/common/background_loop.h"
#include "dsv3/procs/host.h"
#include "dsv3/v1/agent.grpc.pb.h"

namespace dsv3::server {
namespace {

namespace pb = dsv3::v1;
using Stream = grpc::ServerReaderWriter<pb::ControllerMessage, pb::AgentMessage>;
using Clock = std::chrono::steady_clock;

// One connected stream. Writes come from several threads (launches, signals), so they are
// serialized; the handler thread alone reads.
struct Session {
  grpc::ServerContext* ctx = nullptr;
  Stream* stream = nullptr;
  std::mutex write_mu;
  bool Write(const pb::ControllerMessage& m) {
    std::lock_guard<std::mutex> lock(write_mu);
    return stream->Write(m);
  }
};

struct Agent {
  std::string name, address;
  int slots = 0;
  std::shared_ptr<Session> session;  // null while disconnected
  Clock::time_point last_seen{};
  int64_t last_heartbeat_ms = 0;
};

struct RankKey {
  int64_t job_id;
  int attempt, rank;
  bool operator<(const RankKey& o) const { return std::tie(job_id, attempt, rank) < std::tie(o.job_id, o.attempt, o.rank); }
};

struct RankPlace {
  std::string agent, log_path;
  bool confirmed = true;            // false: adopted after a restart, its agent has not said yet
  Clock::time_point adopt_deadline{};
};

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The agent's batch of a rank's output, appended to the rank's log in one write.
void AppendLines(const std::string& path, const pb::AgentLogLines& logs) {
  if (path.empty() || logs.lines().empty()) return;
  std::string text;
  for (const auto& l : logs.lines()) text += l + "\n";
  (void)procs::AppendToLog(path, text);
}

class StaticAllocatorImpl final : public StaticAllocator, public pb::AgentControl::Service {
 public:
  explicit StaticAllocatorImpl(StaticOptions options) : options_(std::move(options)) {
    watcher_.Start([this](BackgroundLoop::Lock& lock) { Watch(lock); });
  }
  ~StaticAllocatorImpl() override {
    Disconnect();
    watcher_.Stop();
  }

  grpc::Service* service() override { return this; }
  void Disconnect() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [name, a] : agents_) {
      if (a.session) a.session->ctx->TryCancel();
    }
  }

  std::string Name() const override { return "static"; }
  int TotalSlots() const override {
    std::lock_guard<std::mutex> lock(mu_);
    int n = 0;
    for (const auto& [name, a] : agents_) n += a.session ? a.slots : 0;
    return n;
  }
  int FreeSlots() const override {
    std::lock_guard<std::mutex> lock(mu_);
    int n = 0;
    for (const auto& [name, a] : agents_) n += a.session ? a.slots - UsedLocked(name) : 0;
    return n;
  }
  std::optional<FieldProblem> CanRun(const JobRecord& job) const override {
    // Agents come and go: a job waits for enough of them, unless the hosts file says the
    // cluster can never hold it.
    if (options_.hosts) {
      int cap = 0;
      bool unbounded = false;
      for (const auto& [name, slots] : *options_.hosts) {
        cap += slots;
        unbounded = unbounded || slots == 0;
      }
      if (!unbounded && job.num_ranks > cap) {
        return FieldProblem{"num_ranks",
                            "the job needs " + std::to_string(job.num_ranks) + " slots but the hosts file allows " +
                                std::to_string(cap),
                            kProblemExceedsCapacity};
      }
    }
    return std::nullopt;
  }
  std::string WhyNotPlaced(const JobRecord& job) const override {
    std::lock_guard<std::mutex> lock(mu_);
    int up = 0, free = 0;
    for (const auto& [name, a] : agents_) {
      if (!a.session) continue;
      ++up;
      free += a.slots - UsedLocked(name);
    }
    return "needs " + std::to_string(job.num_ranks) + " slot(s); " + std::to_string(free) + " free on " +
           std::to_string(up) + " connected agent(s)";
  }
  void SetExitCallback(ExitCallback cb) override {
    std::lock_guard<std::mutex> cb_lock(cb_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    on_exit_ = std::move(cb);
  }

  std::optional<Placement> Reserve(const JobRecord& job) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = reserved_.find(job.id); it != reserved_.end()) return PlacementLocked(it->second);
    // Fewest hosts: the agents with the most free slots first, each filled before the next.
    std::vector<std::pair<int, std::string>> free;
    for (const auto& [name, a] : agents_) {
      const int f = a.session ? a.slots - UsedLocked(name) : 0;
      if (f > 0) free.push_back({-f, name});
    }
    std::sort(free.begin(), free.end());
    std::vector<std::string> hosts;
    for (const auto& [neg, name] : free) {
      for (int i = 0; i < -neg && static_cast<int>(hosts.size()) < job.num_ranks; ++i) hosts.push_back(name);
    }
    if (static_cast<int>(hosts.size()) < job.num_ranks) return std::nullopt;
    reserved_[job.id] = hosts;
    return PlacementLocked(hosts);
  }

  absl::StatusOr<std::vector<LaunchedRank>> Launch(const LaunchSpec& spec) override {
    std::map<std::string, pb::ControllerMessage> per_agent;
    std::map<std::string, std::shared_ptr<Session>> sessions;
    std::vector<LaunchedRank> launched;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = reserved_.find(spec.job_id);
      if (it == reserved_.end()) return absl::FailedPreconditionError("job has no reserved hosts");
      for (const auto& r : spec.ranks) {
        const std::string& host = it->second.at(r.rank);
        const Agent& a = agents_.at(host);
        if (!a.session) return absl::UnavailableError("agent " + host + " is not connected");
        sessions[host] = a.session;
        pb::AgentLaunch* l = per_agent[host].mutable_launch();
        l->set_job_id(spec.job_id);
        l->set_attempt(spec.attempt);
        (*l->mutable_files())["config.json"] = spec.job.config_json + "\n";
        pb::LaunchRank* lr = l->add_ranks();
        lr->set_rank(r.rank);
        for (const auto& arg : r.argv) lr->add_argv(arg);
        for (const auto& [k, v] : r.env) (*lr->mutable_env())[k] = v;
        lr->set_cwd(r.cwd);
        launched.push_back({r.rank, 0, 0, host});
      }
      for (const auto& r : spec.ranks) {
        places_[{spec.job_id, spec.attempt, r.rank}] = RankPlace{it->second.at(r.rank), r.log_path};
      }
    }
    for (auto& [host, msg] : per_agent) {
      // A failed write means the stream is gone; the handler reports the agent's ranks lost.
      if (!sessions[host]->Write(msg)) sessions[host]->ctx->TryCancel();
    }
    return launched;
  }

  void Signal(int64_t job_id, int signal) override {
    std::vector<std::shared_ptr<Session>> targets;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::set<std::string> hosts;
      for (const auto& [key, place] : places_) {
        if (key.job_id == job_id) hosts.insert(place.agent);
      }
      for (const auto& h : hosts) {
        if (auto it = agents_.find(h); it != agents_.end() && it->second.session) targets.push_back(it->second.session);
      }
    }
    pb::ControllerMessage m;
    m.mutable_signal()->set_job_id(job_id);
    m.mutable_signal()->set_signal(signal);
    for (auto& s : targets) s->Write(m);
  }
  void Kill(int64_t job_id) override { Signal(job_id, SIGKILL); }

  void Release(int64_t job_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_.erase(job_id);
  }

  std::vector<int> Adopt(const JobRecord& job, const std::vector<RankRecord>& ranks, const std::string&) override {
    std::vector<int> adopted;
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> hosts(job.num_ranks);
    for (const auto& r : ranks) {
      if (r.rank >= 0 && r.rank < job.num_ranks) hosts[r.rank] = r.host;
      if (r.state == "exited" || r.host.empty()) continue;
      // Presumed alive until its agent reconnects and says otherwise (or never does).
      RankPlace p{r.host, r.log_path, false, Clock::now() + options_.heartbeat_timeout};
      places_[{job.id, job.attempt, r.rank}] = p;
      if (agents_.count(r.host) == 0) agents_[r.host] = Agent{r.host, "", 0, nullptr, {}, 0};
      adopted.push_back(r.rank);
    }
    if (std::none_of(hosts.begin(), hosts.end(), [](const std::string& h) { return h.empty(); })) reserved_[job.id] = hosts;
    return adopted;
  }

  int LiveRanks(int64_t job_id) const override {
    std::lock_guard<std::mutex> lock(mu_);
    int n = 0;
    for (const auto& [key, place] : places_) n += key.job_id == job_id ? 1 : 0;
    return n;
  }

  std::vector<NodeInfo> Nodes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<NodeInfo> out;
    for (const auto& [name, a] : agents_) {
      NodeInfo n{name, a.address, a.session ? "up" : "lost", a.slots, UsedLocked(name), a.last_heartbeat_ms, {}};
      for (const auto& [job, hosts] : reserved_) {
        if (std::find(hosts.begin(), hosts.end(), name) != hosts.end()) n.jobs.push_back(job);
      }
      out.push_back(n);
    }
    return out;
  }

  // ---------------------------------------------------------------- the agent stream
  grpc::Status Connect(grpc::ServerContext* ctx, Stream* stream) override {
    pb::AgentMessage first;
    if (!stream->Read(&first) || !first.has_hello()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "an agent stream starts with a hello");
    }
    const pb::AgentHello& hello = first.hello();
    const auto admitted = options_.agent_of_token(hello.join_token());
    if (!admitted.ok()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "agent '" + hello.name() + "': " + std::string(admitted.status().message()));
    }
    if (*admitted != hello.name()) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "agent '" + hello.name() + "': its credential belongs to agent '" + *admitted + "'");
    }
    int slots = hello.slots();
    if (hello.name().empty() || hello.name().size() > 128 || slots < 1) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "an agent needs a name (<= 128 characters) and slots >= 1");
    }
    if (options_.hosts) {
      const auto it = options_.hosts->find(hello.name());
      if (it == options_.hosts->end()) {
        return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                            "agent '" + hello.name() + "' is not in dsv3d's hosts file");
      }
      if (it->second > 0) slots = std::min(slots, it->second);
    }
    auto session = std::make_shared<Session>();
    session->ctx = ctx;
    session->stream = stream;
    std::vector<RankExit> exits;
    std::vector<int64_t> stale_jobs;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Agent& a = agents_[hello.name()];
      // A reconnect replaces the old stream of the same agent.
      if (a.session) a.session->ctx->TryCancel();
      a.name = hello.name();
      a.address = hello.address().empty() ? ctx->peer() : hello.address();
      a.slots = slots;
      a.session = session;
      a.last_seen = Clock::now();
      a.last_heartbeat_ms = WallMs();
      std::set<RankKey> running;
      for (const auto& r : hello.running()) {
        const RankKey key{r.job_id(), r.attempt(), r.rank()};
        running.insert(key);
        auto it = places_.find(key);
        if (it == places_.end()) {
          stale_jobs.push_back(r.job_id());  // a rank of a job that ended meanwhile
        } else {
          it->second.confirmed = true;
        }
      }
      for (const auto& e : hello.exited()) {
        const RankKey key{e.rank().job_id(), e.rank().attempt(), e.rank().rank()};
        if (places_.erase(key) != 0) exits.push_back({key.job_id, key.attempt, key.rank, e.exit_code(), e.how()});
      }
      for (auto it = places_.begin(); it != places_.end();) {
        if (it->second.agent == a.name && running.count(it->first) == 0) {
          exits.push_back({it->first.job_id, it->first.attempt, it->first.rank, -1,
                           "was not running on agent " + a.name + " when it reconnected"});
          it = places_.erase(it);
        } else {
          ++it;
        }
      }
    }
    pb::ControllerMessage welcome;
    welcome.mutable_welcome()->set_heartbeat_interval_ms(options_.heartbeat_interval.count());
    session->Write(welcome);
    for (int64_t job : stale_jobs) {
      pb::ControllerMessage kill;
      kill.mutable_signal()->set_job_id(job);
      kill.mutable_signal()->set_signal(SIGKILL);
      session->Write(kill);
    }
    Report(exits);

    pb::AgentMessage m;
    while (stream->Read(&m)) {
      exits.clear();
      std::string log_path;
      {
        std::lock_guard<std::mutex> lock(mu_);
        Agent& a = agents_[hello.name()];
        if (a.session != session) break;  // replaced by a newer stream
        a.last_seen = Clock::now();
        a.last_heartbeat_ms = WallMs();
        if (m.has_exit()) {
          const auto& r = m.exit().rank();
          const RankKey key{r.job_id(), r.attempt(), r.rank()};
          if (places_.erase(key) != 0) exits.push_back({key.job_id, key.attempt, key.rank, m.exit().exit_code(), m.exit().how()});
        } else if (m.has_logs()) {
          const auto it = places_.find({m.logs().job_id(), m.logs().attempt(), m.logs().rank()});
          if (it != places_.end() && it->second.agent == a.name) log_path = it->second.log_path;
        }
      }
      if (!log_path.empty()) AppendLines(log_path, m.logs());
      Report(exits);
    }
    Lost(hello.name(), session, "its stream closed");
    return grpc::Status::OK;
  }

 private:
  int UsedLocked(const std::string& agent) const {
    int n = 0;
    for (const auto& [job, hosts] : reserved_) n += static_cast<int>(std::count(hosts.begin(), hosts.end(), agent));
    return n;
  }
  Placement PlacementLocked(const std::vector<std::string>& hosts) const {
    Placement p;
    p.hosts = hosts;
    const auto it = agents_.find(hosts.front());
    p.master_addr = it != agents_.end() ? it->second.address : hosts.front();
    return p;
  }

  void Report(const std::vector<RankExit>& exits) {
    if (exits.empty()) return;
    std::lock_guard<std::mutex> cb_lock(cb_mu_);
    ExitCallback cb;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cb = on_exit_;
    }
    if (cb) {
      for (const auto& e : exits) cb(e);
    }
  }

  // The agent is gone (when `session` is still its stream): its ranks are lost, and the
  // jobs placed on it are placed again at their next attempt.
  void Lost(const std::string& name, const std::shared_ptr<Session>& session, const std::string& why) {
    std::vector<RankExit> exits;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Agent& a = agents_[name];
      if (a.session != session) return;
      a.session = nullptr;
      LoseRanksLocked(name, "lost with agent " + name + " (" + why + ")", exits);
    }
    Report(exits);
  }

  void LoseRanksLocked(const std::string& name, const std::string& how, std::vector<RankExit>& exits) {
    for (auto it = places_.begin(); it != places_.end();) {
      if (it->second.agent == name) {
        exits.push_back({it->first.job_id, it->first.attempt, it->first.rank, -1, how});
        it = places_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = reserved_.begin(); it != reserved_.end();) {
      const auto& hosts = it->second;
      it = std::find(hosts.begin(), hosts.end(), name) != hosts.end() ? reserved_.erase(it) : std::next(it);
    }
  }

  // Heartbeats and adoption deadlines.
  void Watch(BackgroundLoop::Lock& lock) {
    while (watcher_.WaitFor(lock, std::chrono::milliseconds(200))) {
      const auto now = Clock::now();
      std::vector<RankExit> exits;
      for (auto& [name, a] : agents_) {
        if (a.session && now - a.last_seen > options_.heartbeat_timeout) {
          a.session->ctx->TryCancel();
          a.session = nullptr;
          LoseRanksLocked(name, "lost with agent " + name + " (no heartbeat for " +
                                    std::to_string(options_.heartbeat_timeout.count() / 1000.0).substr(0, 4) + " s)",
                          exits);
        }
      }
      for (auto it = places_.begin(); it != places_.end();) {
        const Agent& a = agents_[it->second.agent];
        if (!it->second.confirmed && !a.session && now > it->second.adopt_deadline) {
          exits.push_back({it->first.job_id, it->first.attempt, it->first.rank, -1,
                           "agent " + it->second.agent + " did not reconnect after the controller restarted"});
          it = places_.erase(it);
        } else {
          ++it;
        }
      }
      if (!exits.empty()) {
        lock.unlock();
        Report(exits);
        lock.lock();
      }
    }
  }

  const StaticOptions options_;
  mutable std::mutex mu_;
  std::mutex cb_mu_;  // held while the exit callback runs; taken before mu_
  ExitCallback on_exit_;
  std::map<std::string, Agent> agents_;
  std::map<int64_t, std::vector<std::string>> reserved_;  // job -> the agent of each rank
  std::map<RankKey, RankPlace> places_;                   // launched ranks not yet exited
  BackgroundLoop watcher_{mu_};  // last: stopped before the members it reads go away
};

}  // namespace

std::unique_ptr<StaticAllocator> MakeStaticAllocator(StaticOptions options) {
  return std::make_unique<StaticAllocatorImpl>(std::move(options));
}

absl::StatusOr<std::map<std::string, int>> ReadHostsFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError("--hosts: cannot read " + path);
  std::map<std::string, int> hosts;
  int line_no = 0;
  for (std::string line; std::getline(f, line);) {
    ++line_no;
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    std::string name, extra;
    if (!(words >> name)) continue;
    int slots = 0;
    while (words >> extra) {
      if (extra.rfind("slots=", 0) == 0 && extra.size() > 6 &&
          extra.find_first_not_of("0123456789", 6) == std::string::npos && std::stoi(extra.substr(6)) > 0) {
        slots = std::stoi(extra.substr(6));
      } else {
        return absl::InvalidArgumentError("--hosts: " + path + ":" + std::to_string(line_no) + ": '" + extra +
                                          "' is not slots=N (N >= 1)");
      }
    }
    hosts[name] = slots;
  }
  if (hosts.empty()) return absl::InvalidArgumentError("--hosts: " + path + " names no host");
  return hosts;
}

}  // namespace dsv3::server
