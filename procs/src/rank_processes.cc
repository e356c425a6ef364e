#include "dsv3/procs/rank_processes.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "dsv3/common/background_loop.h"

namespace dsv3::procs {
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

}  // namespace

struct RankProcesses::State {
  struct Proc {
    int64_t job_id;
    int attempt, rank;
    pid_t pid;
    int64_t proc_start;
    bool child;  // false: adopted from an earlier process (not ours to wait for)
    std::string log_path;
  };

  explicit State(bool die) : die_with_parent(die) {}

  // fork + exec with everything the child needs prepared before the fork: a multithreaded
  // parent's child may only make async-signal-safe calls.
  absl::StatusOr<int64_t> Spawn(const RankLaunch& r) const {
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
      if (die_with_parent) {
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

  // Reaps children and polls adopted processes; reports the exits outside `mu`; caps logs.
  void Watch(BackgroundLoop::Lock& lock) {
    auto next_cap_check = std::chrono::steady_clock::now();
    while (loop.WaitFor(lock, kPollInterval)) {
      if (log_cap > 0 && std::chrono::steady_clock::now() >= next_cap_check) {
        next_cap_check = std::chrono::steady_clock::now() + RankProcesses::kLogCapInterval;
        std::vector<std::string> logs;
        for (const Proc& p : procs) {
          if (!p.log_path.empty()) logs.push_back(p.log_path);
        }
        const int64_t cap = log_cap;
        lock.unlock();
        for (const auto& path : logs) RotateLogIfOver(path, cap);  // without `mu`
        lock.lock();
      }
      std::vector<RankExit> exits;
      for (auto it = procs.begin(); it != procs.end();) {
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
          it = procs.erase(it);
        } else {
          ++it;
        }
      }
      if (exits.empty()) continue;
      lock.unlock();
      {
        std::lock_guard<std::mutex> cb_lock(cb_mu);
        ExitCallback cb;
        {
          std::lock_guard<std::mutex> relock(mu);
          cb = on_exit;
        }
        if (cb) {
          for (const auto& e : exits) cb(e);
        }
      }
      lock.lock();
    }
  }

  const bool die_with_parent;
  mutable std::mutex mu;
  std::mutex cb_mu;  // held while the exit callback runs; taken before mu
  ExitCallback on_exit;
  std::vector<Proc> procs;
  int64_t log_cap = 0;  // bytes; 0 = none
  BackgroundLoop loop{mu};  // last: stopped before the members it reads go away
};

RankProcesses::RankProcesses(bool die_with_parent) : s_(std::make_unique<State>(die_with_parent)) {
  s_->loop.Start([s = s_.get()](BackgroundLoop::Lock& lock) { s->Watch(lock); });
}

RankProcesses::~RankProcesses() { s_->loop.Stop(); }

void RankProcesses::SetExitCallback(ExitCallback cb) {
  std::lock_guard<std::mutex> cb_lock(s_->cb_mu);
  std::lock_guard<std::mutex> lock(s_->mu);
  s_->on_exit = std::move(cb);
}

absl::StatusOr<std::vector<StartedRank>> RankProcesses::Start(int64_t job_id, int attempt,
                                                              const std::vector<RankLaunch>& ranks) {
  std::vector<StartedRank> started;
  for (const auto& r : ranks) {
    auto pid = s_->Spawn(r);
    if (!pid.ok()) {
      // Leave nothing half-started behind.
      for (const auto& s : started) kill(-static_cast<pid_t>(s.pid), SIGKILL);
      return absl::Status(pid.status().code(),
                          "rank " + std::to_string(r.rank) + ": " + std::string(pid.status().message()));
    }
    // The child may not have exec'd yet; its start time is fixed at fork either way.
    started.push_back({r.rank, *pid, ProcessStartTime(*pid)});
  }
  std::lock_guard<std::mutex> lock(s_->mu);
  for (size_t i = 0; i < started.size(); ++i) {
    const StartedRank& s = started[i];
    s_->procs.push_back({job_id, attempt, s.rank, static_cast<pid_t>(s.pid), s.proc_start, true, ranks[i].log_path});
  }
  return started;
}

bool RankProcesses::Adopt(int64_t job_id, int attempt, int rank, int64_t pid, int64_t proc_start,
                          const std::string& log_path) {
  if (pid <= 0) return false;
  const int64_t start = ProcessStartTime(pid);
  if (start == 0 || (proc_start != 0 && start != proc_start)) return false;  // gone, or a reused pid
  std::lock_guard<std::mutex> lock(s_->mu);
  s_->procs.push_back({job_id, attempt, rank, static_cast<pid_t>(pid), start, false, log_path});
  return true;
}

bool RotateLogIfOver(const std::string& path, int64_t cap) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || static_cast<int64_t>(size) <= cap) return false;
  std::filesystem::copy_file(path, path + ".1", std::filesystem::copy_options::overwrite_existing, ec);
  if (!ec) std::filesystem::resize_file(path, 0, ec);
  return !ec;
}

void RankProcesses::SetLogCap(int64_t max_bytes) {
  std::lock_guard<std::mutex> lock(s_->mu);
  s_->log_cap = std::max<int64_t>(0, max_bytes);
}

void RankProcesses::Signal(int64_t job_id, int signal) {
  std::lock_guard<std::mutex> lock(s_->mu);
  for (const auto& p : s_->procs) {
    if (p.job_id == job_id) kill(-p.pid, signal);
  }
}

int RankProcesses::Live(int64_t job_id) const {
  std::lock_guard<std::mutex> lock(s_->mu);
  int n = 0;
  for (const auto& p : s_->procs) n += p.job_id == job_id ? 1 : 0;
  return n;
}

std::vector<int64_t> RankProcesses::Jobs() const {
  std::lock_guard<std::mutex> lock(s_->mu);
  std::set<int64_t> jobs;
  for (const auto& p : s_->procs) jobs.insert(p.job_id);
  return {jobs.begin(), jobs.end()};
}

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

}  // namespace dsv3::procs
