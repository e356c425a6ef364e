#include "allocators/slurm_allocator.h"

#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "dsv3/common/background_loop.h"
#include "dsv3/common/env.h"
#include "dsv3/common/slurm_script.h"
#include "dsv3/procs/command.h"
#include "dsv3/procs/rank_processes.h"

namespace dsv3::server {

SlurmStateMeaning InterpretSlurmState(const std::string& state) {
  // Slurm 22.05's job states (squeue %T). Everything not listed as waiting or running ends.
  static const std::set<std::string> kWaiting = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
                                                 "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED",
                                                 "RESIZING", "SIGNALING", "STAGE_OUT"};
  SlurmStateMeaning m;
  if (state == "RUNNING" || state == "COMPLETING") {
    m.running = true;
  } else if (kWaiting.count(state) == 0) {
    m.ended = true;
    m.exit_code = state == "COMPLETED" ? 0 : state == "CANCELLED" ? 128 + 15 : 1;
  }
  return m;
}

namespace {

bool InPath(const std::string& tool) {
  const char* path = std::getenv(env::kPath);
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (!dir.empty() && access((dir + "/" + tool).c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::string UserName() {
  if (const passwd* pw = getpwuid(getuid())) return pw->pw_name;
  return std::to_string(getuid());
}

// The slurm section a job runs with, from its plan: `*section`, or the problem that stops
// it. A config that does not enable Slurm itself (dsv3d --allocator slurm) keeps its
// section's partition, CPUs, memory and time, and gets as many tasks as the job has ranks.
std::optional<FieldProblem> FitSlurmSection(const JobRecord& job, config::SlurmConfig* section) {
  config::SlurmConfig& s = *section;
  s = job.plan.slurm;
  if (s.nodes < 1) s.nodes = 1;
  if (!s.enabled) {
    if (job.num_ranks % s.nodes != 0) {
      return FieldProblem{"/slurm/nodes",
                          std::to_string(s.nodes) + " node(s) cannot hold " + std::to_string(job.num_ranks) +
                              " rank(s) evenly",
                          kProblemSlurmLayout};
    }
    s.ntasks_per_node = job.num_ranks / s.nodes;
  } else if (s.nodes * s.ntasks_per_node != job.num_ranks) {
    return FieldProblem{"/slurm/ntasks_per_node",
                        std::to_string(s.nodes) + " x " + std::to_string(s.ntasks_per_node) +
                            " tasks is not the job's " + std::to_string(job.num_ranks) + " rank(s)",
                        kProblemSlurmLayout};
  }
  return std::nullopt;
}

class SlurmAllocator final : public Allocator {
 public:
  explicit SlurmAllocator(SlurmOptions options) : options_(options), user_(UserName()) {
    poller_.Start([this](BackgroundLoop::Lock& lock) { Poll(lock); });
  }
  ~SlurmAllocator() override { poller_.Stop(); }

  std::string Name() const override { return "slurm"; }
  int TotalSlots() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return total_cpus_;
  }
  int FreeSlots() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return idle_cpus_;
  }
  std::optional<FieldProblem> CanRun(const JobRecord& job) const override {
    config::SlurmConfig section;
    return FitSlurmSection(job, &section);
  }
  void SetExitCallback(ExitCallback cb) override {
    std::lock_guard<std::mutex> cb_lock(cb_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    on_exit_ = std::move(cb);
  }
  void SetAllocationCallback(AllocationCallback cb) override {
    std::lock_guard<std::mutex> cb_lock(cb_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    on_allocation_ = std::move(cb);
  }

  // Slurm queues what does not fit; the Slurm queue is the queue.
  std::optional<Placement> Reserve(const JobRecord&) override { return Placement{}; }

  std::string DescribeLaunch(const LaunchSpec& spec) const override {
    if (spec.ranks.empty() || spec.ranks[0].argv.empty()) return "";
    config::SlurmConfig section;
    if (auto problem = FitSlurmSection(spec.job, &section)) {
      return "  cannot write the sbatch script: " + problem->path + ": " + problem->message + "\n";
    }
    return "  Slurm layout: " + config::DescribeSlurmLayout(section) + "\n  sbatch script:\n" + Script(spec, section);
  }

  absl::StatusOr<std::vector<LaunchedRank>> Launch(const LaunchSpec& spec) override {
    if (spec.ranks.empty() || spec.ranks[0].argv.empty()) return absl::InvalidArgumentError("no rank to launch");
    config::SlurmConfig section;
    if (auto problem = FitSlurmSection(spec.job, &section)) {
      return absl::InvalidArgumentError(problem->path + ": " + problem->message);
    }
    const std::string script = Script(spec, section);
    const std::string path = spec.job.job_dir + "/slurm_attempt_" + std::to_string(spec.attempt) + ".sh";
    {
      // The script holds the job's credential: readable by its owner only.
      std::ofstream f(path, std::ios::trunc);
      f << script;
      if (!f) return absl::InternalError("cannot write " + path);
    }
    chmod(path.c_str(), 0700);
    const procs::CommandResult r = procs::RunCommand({"sbatch", "--parsable", path}, options_.command_timeout);
    if (!r.ok()) return absl::FailedPreconditionError(r.Describe("sbatch"));
    std::string id = r.out.substr(0, r.out.find_first_of(";\n"));
    if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos) {
      return absl::InternalError("sbatch --parsable printed '" + r.out + "', not a job id");
    }
    Track t = MakeTrack(spec.job, spec.attempt, id);
    {
      // Delivered by the poller: the caller holds its own lock, which the callback takes.
      std::lock_guard<std::mutex> lock(mu_);
      tracked_[spec.job_id] = t;
      pending_.push_back({spec.job_id, spec.attempt, Name(), id, "SUBMITTED", "sbatch " + path, false});
    }
    poller_.Wake();
    std::vector<LaunchedRank> ranks;
    for (int r = 0; r < spec.job.num_ranks; ++r) ranks.push_back({r, 0, 0, ""});
    return ranks;
  }

  void Signal(int64_t job_id, int signal) override {
    const std::string id = SlurmId(job_id);
    if (id.empty()) return;
    // SIGTERM is a cancel: plain scancel makes the job CANCELLED and gives the ranks the
    // cluster's KillWait to checkpoint. Other signals go to the job's steps (the ranks).
    std::vector<std::string> argv = {"scancel"};
    if (signal != SIGTERM && signal != SIGKILL) argv.push_back("--signal=" + std::to_string(signal));
    argv.push_back(id);
    (void)procs::RunCommand(argv, options_.command_timeout);
    poller_.Wake();
  }
  void Kill(int64_t job_id) override { Signal(job_id, SIGKILL); }

  void Release(int64_t job_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    tracked_.erase(job_id);
  }

  std::vector<int> Adopt(const JobRecord& job, const std::vector<RankRecord>&, const std::string& external_id) override {
    if (external_id.empty()) return {};
    {
      std::lock_guard<std::mutex> lock(mu_);
      tracked_[job.id] = MakeTrack(job, job.attempt, external_id);
    }
    poller_.Wake();
    // Slurm knows whether the ranks still run; the next poll reports them if they ended.
    std::vector<int> all;
    for (int r = 0; r < job.num_ranks; ++r) all.push_back(r);
    return all;
  }

  int LiveRanks(int64_t job_id) const override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = tracked_.find(job_id);
    return it == tracked_.end() || it->second.ended ? 0 : it->second.num_ranks;
  }

  std::vector<NodeInfo> Nodes() const override {
    std::vector<NodeInfo> nodes;
    const procs::CommandResult r = procs::RunCommand({"sinfo", "-h", "-N", "-o", "%N|%t|%C|%o"}, options_.command_timeout);
    if (!r.ok()) return nodes;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      std::vector<std::string> f;
      std::istringstream fields(line);
      for (std::string x; std::getline(fields, x, '|');) f.push_back(x);
      if (f.size() < 4) continue;
      // %C is allocated/idle/other/total CPUs.
      int alloc = 0, idle = 0, other = 0, total = 0;
      std::sscanf(f[2].c_str(), "%d/%d/%d/%d", &alloc, &idle, &other, &total);
      NodeInfo n{f[0], f[3], f[1], total, alloc, 0, {}};
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [id, t] : tracked_) {
        if (!t.ended) n.jobs.push_back(id);
      }
      nodes.push_back(n);
    }
    return nodes;
  }

 private:
  struct Track {
    int64_t job_id = 0;
    int attempt = 0, num_ranks = 0;
    std::string slurm_id;
    std::string state, reason;
    std::string log_dir;  // where srun writes rank_<r>.log
    bool ended = false;
    int misses = 0;  // polls in a row where neither squeue nor scontrol knew the job
  };
  static Track MakeTrack(const JobRecord& job, int attempt, const std::string& slurm_id) {
    Track t;
    t.job_id = job.id;
    t.attempt = attempt;
    t.num_ranks = job.num_ranks;
    t.slurm_id = slurm_id;
    t.log_dir = job.job_dir + "/logs";
    return t;
  }

  // The batch script of one attempt: the first rank's command and the environment every
  // rank shares; Slurm's own variables give each task its place.
  std::string Script(const LaunchSpec& spec, const config::SlurmConfig& slurm) const {
    const RankLaunch& first = spec.ranks[0];
    config::SlurmScriptOptions o;
    o.worker = first.argv[0];
    o.worker_args.assign(first.argv.begin() + 1, first.argv.end());
    for (size_t i = 0; i + 1 < o.worker_args.size(); ++i) {
      // A rank's threads are the CPUs Slurm gives its task.
      if (o.worker_args[i] == "--threads") o.worker_args[i + 1] = std::to_string(slurm.cpus_per_task);
    }
    for (const auto& [k, v] : first.env) {
      if (!IsPerRankVariable(k)) o.env[k] = v;
    }
    o.chdir = spec.job.job_dir;
    o.rank_output = spec.job.job_dir + "/logs/rank_%t.log";  // Track::log_dir
    o.signal_margin_s = options_.signal_margin_s;
    o.header_comment = "dsv3 job " + std::to_string(spec.job_id) + " (" + spec.job.name + "), attempt " +
                       std::to_string(spec.attempt) + ", written by dsv3d";
    return config::RenderSlurmScript(slurm, o);
  }

  std::string SlurmId(int64_t job_id) const {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = tracked_.find(job_id);
    return it == tracked_.end() ? "" : it->second.slurm_id;
  }

  // state|reason of one job from `scontrol show job -o`, for jobs squeue has forgotten.
  std::optional<std::pair<std::string, std::string>> ScontrolState(const std::string& id) const {
    const procs::CommandResult r = procs::RunCommand({"scontrol", "show", "job", "-o", id}, options_.command_timeout);
    if (!r.ok()) return std::nullopt;
    const auto field = [&](const std::string& key) {
      const auto at = r.out.find(" " + key + "=");
      if (at == std::string::npos) return std::string();
      const auto start = at + key.size() + 2;
      return r.out.substr(start, r.out.find_first_of(" \n", start) - start);
    };
    const std::string state = field("JobState");
    if (state.empty()) return std::nullopt;
    return std::make_pair(state, field("Reason"));
  }

  void Poll(BackgroundLoop::Lock& lock) {
    int cycle = 0;
    auto next_cap_check = std::chrono::steady_clock::now();
    // The first poll runs at once, the others every poll_interval or when woken.
    for (bool first = true; first ? !poller_.Stopping() : poller_.WaitFor(lock, options_.poll_interval);
         first = false) {
      std::vector<Track> tracks;
      for (const auto& [id, t] : tracked_) {
        if (!t.ended) tracks.push_back(t);
      }
      // The cluster's CPU count is only shown when Slurm is dsv3d's own allocator, or while it
      // runs jobs: an idle daemon whose Slurm is away must not block in sinfo (it retries for
      // a minute when its config is missing), nor its shutdown wait for one.
      const bool refresh_cpus = (options_.probe || !tracks.empty()) && cycle++ % 60 == 0;
      lock.unlock();
      if (refresh_cpus) RefreshCpus();
      if (options_.max_rank_log_bytes > 0 && std::chrono::steady_clock::now() >= next_cap_check) {
        next_cap_check = std::chrono::steady_clock::now() + procs::RankProcesses::kLogCapInterval;
        for (const auto& t : tracks) {
          for (int r = 0; r < t.num_ranks; ++r) {
            procs::RotateLogIfOver(t.log_dir + "/rank_" + std::to_string(r) + ".log", options_.max_rank_log_bytes);
          }
        }
      }
      std::map<std::string, std::pair<std::string, std::string>> states;
      if (!tracks.empty()) {
        const procs::CommandResult q =
            procs::RunCommand({"squeue", "-h", "-t", "all", "-u", user_, "-o", "%i|%T|%r"}, options_.command_timeout);
        std::istringstream lines(q.ok() ? q.out : "");
        for (std::string line; std::getline(lines, line);) {
          const auto a = line.find('|'), b = line.rfind('|');
          if (a == std::string::npos || a == b) continue;
          states[line.substr(0, a)] = {line.substr(a + 1, b - a - 1), line.substr(b + 1)};
        }
        for (const auto& t : tracks) {
          if (states.count(t.slurm_id) == 0 && q.ok()) {
            if (auto s = ScontrolState(t.slurm_id)) states[t.slurm_id] = *s;
          }
        }
        if (!q.ok()) tracks.clear();  // the controller is away: try again next poll
      }
      std::vector<AllocationUpdate> updates;
      std::vector<RankExit> exits;
      lock.lock();
      updates.swap(pending_);
      for (const auto& seen : tracks) {
        auto it = tracked_.find(seen.job_id);
        if (it == tracked_.end() || it->second.slurm_id != seen.slurm_id || it->second.ended) continue;
        Track& t = it->second;
        std::string state, reason;
        if (const auto s = states.find(t.slurm_id); s != states.end()) {
          std::tie(state, reason) = s->second;
          t.misses = 0;
        } else if (++t.misses >= 5) {
          state = "VANISHED";
          reason = "neither squeue nor scontrol knows the job any more";
        } else {
          continue;
        }
        if (reason == "None") reason.clear();
        if (state == t.state && reason == t.reason) continue;
        t.state = state;
        t.reason = reason;
        const SlurmStateMeaning m = InterpretSlurmState(state);
        updates.push_back({t.job_id, t.attempt, "slurm", t.slurm_id, state, reason, m.running || m.ended});
        if (m.ended) {
          t.ended = true;
          const std::string how = "ended with Slurm job " + t.slurm_id + " " + state + (reason.empty() ? "" : " (" + reason + ")");
          for (int r = 0; r < t.num_ranks; ++r) exits.push_back({t.job_id, t.attempt, r, m.exit_code, how});
        }
      }
      lock.unlock();
      {
        std::lock_guard<std::mutex> cb_lock(cb_mu_);
        AllocationCallback on_allocation;
        ExitCallback on_exit;
        {
          std::lock_guard<std::mutex> relock(mu_);
          on_allocation = on_allocation_;
          on_exit = on_exit_;
        }
        for (const auto& u : updates) {
          if (on_allocation) on_allocation(u);
        }
        for (const auto& e : exits) {
          if (on_exit) on_exit(e);
        }
      }
      lock.lock();
    }
  }

  void RefreshCpus() {
    const procs::CommandResult r = procs::RunCommand({"sinfo", "-h", "-o", "%C"}, options_.command_timeout);
    int alloc = 0, idle = 0, other = 0, total = 0;
    if (r.ok() && std::sscanf(r.out.c_str(), "%d/%d/%d/%d", &alloc, &idle, &other, &total) == 4) {
      std::lock_guard<std::mutex> lock(mu_);
      total_cpus_ = total;
      idle_cpus_ = idle;
    }
  }

  const SlurmOptions options_;
  const std::string user_;
  mutable std::mutex mu_;
  std::mutex cb_mu_;  // held while callbacks run; taken before mu_
  ExitCallback on_exit_;
  AllocationCallback on_allocation_;
  std::map<int64_t, Track> tracked_;
  std::vector<AllocationUpdate> pending_;
  int total_cpus_ = 0, idle_cpus_ = 0;
  BackgroundLoop poller_{mu_};  // last: stopped before the members it reads go away
};

}  // namespace

absl::StatusOr<std::unique_ptr<Allocator>> MakeSlurmAllocator(const SlurmOptions& options) {
  for (const char* tool : {"sbatch", "squeue", "scancel", "scontrol", "sinfo"}) {
    if (!InPath(tool)) {
      return absl::FailedPreconditionError(std::string("Slurm is not available here: ") + tool +
                                           " is not in PATH (install the Slurm client)");
    }
  }
  if (options.probe) {
    // sinfo retries for a minute when the cluster's config cannot be read: bound the wait.
    const procs::CommandResult r = procs::RunCommand({"sinfo", "-h", "-o", "%C"}, std::min(options.command_timeout, std::chrono::milliseconds(10000)));
    if (!r.ok()) {
      return absl::FailedPreconditionError("Slurm is not available here: " + r.Describe("sinfo") +
                                           " (is slurmctld up, and does SLURM_CONF name the cluster's slurm.conf?)");
    }
  }
  return std::unique_ptr<Allocator>(new SlurmAllocator(options));
}

}  // namespace dsv3::server
