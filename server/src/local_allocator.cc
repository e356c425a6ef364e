#include "dsv3/server/local_allocator.h"

#include "dsv3/server/host_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace dsv3::server {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(100);

std::string DescribeStatus(int status, int* exit_code) {
  if (WIFEXITED(status)) {
    *exit_code = WEXITSTATUS(status);
    return "exited with status " + std::to_string(*exit_code);
  }
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    *exit_code = 128 + sig;
    const char* name = strsignal(sig);
    return "killed by signal " + std::to_string(sig) + (name != nullptr ? std::string(" (") + name + ")" : "");
  }
  *exit_code = -1;
  return "ended with wait status " + std::to_string(status);
}

class LocalAllocator final : public Allocator {
 public:
  LocalAllocator(int slots, bool die_with_parent)
      : slots_(slots), die_with_parent_(die_with_parent), host_(HostName()) {
    watcher_ = std::thread([this] { Watch(); });
  }
  ~LocalAllocator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    watcher_.join();
  }

  std::string Name() const override { return "local"; }
  int TotalSlots() const override { return slots_; }
  int FreeSlots() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return slots_ - UsedLocked();
  }
  void SetExitCallback(ExitCallback cb) override {
    // Also waits for a callback in progress: after this returns the old one never runs.
    std::lock_guard<std::mutex> cb_lock(cb_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    on_exit_ = std::move(cb);
  }

  std::optional<Placement> Reserve(const JobRecord& job) override {
    const int64_t job_id = job.id;
    const int num_ranks = job.num_ranks;
    std::lock_guard<std::mutex> lock(mu_);
    if (reserved_.count(job_id) != 0) return PlacementFor(num_ranks);
    if (slots_ - UsedLocked() < num_ranks) return std::nullopt;
    reserved_[job_id] = num_ranks;
    return PlacementFor(num_ranks);
  }

  absl::StatusOr<std::vector<LaunchedRank>> Launch(const LaunchSpec& spec) override {
    std::vector<LaunchedRank> started;
    for (const auto& r : spec.ranks) {
      auto pid = Spawn(r);
      if (!pid.ok()) {
        // Leave nothing half-started behind.
        for (const auto& s : started) kill(-static_cast<pid_t>(s.pid), SIGKILL);
        return absl::Status(pid.status().code(), "rank " + std::to_string(r.rank) + ": " +
                                                     std::string(pid.status().message()));
      }
      LaunchedRank l{r.rank, *pid, 0, host_};
      // The child may not have exec'd yet; its start time is fixed at fork either way.
      l.proc_start = ProcessStartTime(*pid);
      started.push_back(l);
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& s : started) {
      procs_.push_back({spec.job_id, spec.attempt, s.rank, static_cast<pid_t>(s.pid), s.proc_start, true});
    }
    return started;
  }

  void Signal(int64_t job_id, int signal) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& p : procs_) {
      if (p.job_id == job_id) kill(-p.pid, signal);
    }
  }
  void Kill(int64_t job_id) override { Signal(job_id, SIGKILL); }

  void Release(int64_t job_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_.erase(job_id);
  }

  std::vector<int> Adopt(const JobRecord& job, const std::vector<RankRecord>& ranks, const std::string&) override {
    const int64_t job_id = job.id;
    const int attempt = job.attempt;
    std::vector<int> adopted;
    std::lock_guard<std::mutex> lock(mu_);
    reserved_[job_id] = job.num_ranks;
    for (const auto& r : ranks) {
      if (r.state == "exited" || r.pid <= 0) continue;
      const int64_t start = ProcessStartTime(r.pid);
      if (start == 0 || (r.proc_start != 0 && start != r.proc_start)) continue;  // gone, or a reused pid
      procs_.push_back({job_id, attempt, r.rank, static_cast<pid_t>(r.pid), start, false});
      adopted.push_back(r.rank);
    }
    return adopted;
  }

  std::vector<NodeInfo> Nodes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    NodeInfo n{host_, "127.0.0.1", "up", slots_, UsedLocked(), 0, {}};
    for (const auto& [id, count] : reserved_) n.jobs.push_back(id);
    return {n};
  }

  int LiveRanks(int64_t job_id) const override {
    std::lock_guard<std::mutex> lock(mu_);
    int n = 0;
    for (const auto& p : procs_) n += p.job_id == job_id ? 1 : 0;
    return n;
  }

 private:
  struct Proc {
    int64_t job_id;
    int attempt, rank;
    pid_t pid;
    int64_t proc_start;
    bool child;  // false: adopted after a controller restart (not ours to wait for)
  };

  int UsedLocked() const {
    int used = 0;
    for (const auto& [id, n] : reserved_) used += n;
    return used;
  }
  Placement PlacementFor(int num_ranks) const {
    Placement p;
    p.hosts.assign(num_ranks, host_);
    p.master_addr = "127.0.0.1";
    return p;
  }

  // fork + exec with everything the child needs prepared before the fork: a multithreaded
  // parent's child may only make async-signal-safe calls.
  absl::StatusOr<int64_t> Spawn(const RankLaunch& r) {
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string kv = *e;
      const auto eq = kv.find('=');
      if (eq != std::string::npos && r.env.count(kv.substr(0, eq)) != 0) continue;
      env_strings.push_back(kv);
    }
    for (const auto& [k, v] : r.env) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp, argv;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = r.argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);

    const int log_fd = open(r.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return absl::InternalError("cannot open log " + r.log_path + ": " + strerror(errno));
    int err_pipe[2];
    if (pipe2(err_pipe, O_CLOEXEC) != 0) {
      close(log_fd);
      return absl::InternalError(std::string("pipe: ") + strerror(errno));
    }
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
      const int e = errno;
      close(log_fd);
      close(err_pipe[0]);
      close(err_pipe[1]);
      return absl::ResourceExhaustedError(std::string("fork: ") + strerror(e));
    }
    if (pid == 0) {
      setpgid(0, 0);
      if (die_with_parent_) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);  // the parent died before prctl
      }
      // dsv3d blocks SIGTERM/SIGINT for its sigwait thread and gRPC ignores SIGPIPE; a
      // rank must start with neither, or a cancel's SIGTERM would never arrive.
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      signal(SIGPIPE, SIG_DFL);
      int fail = 0;
      if (chdir(r.cwd.c_str()) != 0) fail = errno;
      if (fail == 0) {
        const int null_fd = open("/dev/null", O_RDONLY);
        if (null_fd >= 0) dup2(null_fd, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        // Sockets and files of dsv3d must not leak into ranks (a listening socket kept open
        // by a rank would stop a restarted controller from binding its port).
        const int keep = err_pipe[1];
        for (int fd = 3; fd < 4096; ++fd) {
          if (fd != keep) close(fd);
        }
        execve(argv[0], argv.data(), envp.data());
        fail = errno;
      }
      [[maybe_unused]] ssize_t n = write(err_pipe[1], &fail, sizeof(fail));
      _exit(127);
    }
    setpgid(pid, pid);  // also in the parent: no window where a signal misses the group
    close(log_fd);
    close(err_pipe[1]);
    int child_errno = 0;
    ssize_t n;
    do {
      n = read(err_pipe[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    close(err_pipe[0]);
    if (n > 0) {
      waitpid(pid, nullptr, 0);
      return absl::FailedPreconditionError("cannot start " + r.argv[0] + " in " + r.cwd + ": " +
                                           strerror(child_errno));
    }
    return static_cast<int64_t>(pid);
  }

  void Watch() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, kPollInterval);
      std::vector<RankExit> exits;
      for (auto it = procs_.begin(); it != procs_.end();) {
        RankExit e{it->job_id, it->attempt, it->rank, -1, ""};
        bool gone = false;
        if (it->child) {
          int status = 0;
          const pid_t w = waitpid(it->pid, &status, WNOHANG);
          if (w == it->pid) {
            e.how = DescribeStatus(status, &e.exit_code);
            gone = true;
          } else if (w < 0 && errno == ECHILD) {
            e.how = "vanished (not a child any more)";
            gone = true;
          }
        } else if (ProcessStartTime(it->pid) != it->proc_start) {
          e.how = "exited while dsv3d was not its parent (status unknown)";
          gone = true;
        }
        if (gone) {
          exits.push_back(e);
          it = procs_.erase(it);
        } else {
          ++it;
        }
      }
      if (!exits.empty()) {
        lock.unlock();
        {
          std::lock_guard<std::mutex> cb_lock(cb_mu_);
          ExitCallback cb;
          {
            std::lock_guard<std::mutex> relock(mu_);
            cb = on_exit_;
          }
          if (cb) {
            for (const auto& e : exits) cb(e);
          }
        }
        lock.lock();
      }
    }
  }

  const int slots_;
  const bool die_with_parent_;
  const std::string host_;
  mutable std::mutex mu_;
  std::mutex cb_mu_;  // held while the exit callback runs; taken before mu_
  std::condition_variable cv_;
  bool stop_ = false;
  ExitCallback on_exit_;
  std::map<int64_t, int> reserved_;
  std::vector<Proc> procs_;
  std::thread watcher_;
};

}  // namespace

int64_t ProcessStartTime(int64_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(f, stat)) return 0;
  // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(stat.substr(close + 2));
  std::string state;
  rest >> state;  // field 3
  if (state == "Z" || state == "X") return 0;
  std::string skip;
  for (int field = 4; field < 22; ++field) rest >> skip;
  int64_t start = 0;
  rest >> start;
  return start;
}

std::unique_ptr<Allocator> MakeLocalAllocator(int slots, bool die_with_parent) {
  return std::make_unique<LocalAllocator>(slots, die_with_parent);
}

}  // namespace dsv3::server
