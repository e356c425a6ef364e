#include "allocators/local_allocator.h"

#include <signal.h>

#include <fstream>
#include <mutex>

#include "dsv3/procs/host.h"
#include "dsv3/procs/rank_processes.h"

namespace dsv3::server {
namespace {

class LocalAllocator final : public Allocator {
 public:
  LocalAllocator(int slots, int64_t max_log_bytes) : slots_(slots), host_(procs::HostName()) {
    procs_.SetLogCap(max_log_bytes);
  }

  std::string Name() const override { return "local"; }
  int TotalSlots() const override { return slots_; }
  std::optional<double> HostMemoryBytes(const JobRecord&) const override {
    std::ifstream in("/proc/meminfo");
    std::string key;
    double kib = 0;
    while (in >> key >> kib) {
      if (key == "MemTotal:") return kib * 1024.0;
      in.ignore(256, '\n');
    }
    return std::nullopt;
  }
  int FreeSlots() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return slots_ - UsedLocked();
  }
  void SetExitCallback(ExitCallback cb) override { procs_.SetExitCallback(std::move(cb)); }

  std::optional<Placement> Reserve(const JobRecord& job) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (reserved_.count(job.id) == 0) {
      if (slots_ - UsedLocked() < job.num_ranks) return std::nullopt;
      reserved_[job.id] = job.num_ranks;
    }
    Placement p;
    p.hosts.assign(static_cast<size_t>(job.num_ranks), host_);
    p.master_addr = "127.0.0.1";
    return p;
  }

  absl::StatusOr<std::vector<LaunchedRank>> Launch(const LaunchSpec& spec) override {
    auto started = procs_.Start(spec.job_id, spec.attempt, spec.ranks);
    if (!started.ok()) return started.status();
    std::vector<LaunchedRank> out;
    for (const auto& s : *started) out.push_back({s.rank, s.pid, s.proc_start, host_});
    return out;
  }

  void Signal(int64_t job_id, int signal) override { procs_.Signal(job_id, signal); }
  void Kill(int64_t job_id) override { procs_.Signal(job_id, SIGKILL); }

  void Release(int64_t job_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_.erase(job_id);
  }

  std::vector<int> Adopt(const JobRecord& job, const std::vector<RankRecord>& ranks, const std::string&) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      reserved_[job.id] = job.num_ranks;
    }
    std::vector<int> adopted;
    for (const auto& r : ranks) {
      if (r.state == "exited") continue;
      if (procs_.Adopt(job.id, job.attempt, r.rank, r.pid, r.proc_start, r.log_path)) adopted.push_back(r.rank);
    }
    return adopted;
  }

  std::vector<NodeInfo> Nodes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    NodeInfo n{host_, "127.0.0.1", "up", slots_, UsedLocked(), 0, {}};
    for (const auto& [id, count] : reserved_) n.jobs.push_back(id);
    return {n};
  }

  int LiveRanks(int64_t job_id) const override { return procs_.Live(job_id); }

 private:
  int UsedLocked() const {
    int used = 0;
    for (const auto& [id, n] : reserved_) used += n;
    return used;
  }

  const int slots_;
  const std::string host_;
  mutable std::mutex mu_;  // guards reserved_
  std::map<int64_t, int> reserved_;
  procs::RankProcesses procs_;
};

}  // namespace

std::unique_ptr<Allocator> MakeLocalAllocator(int slots, int64_t max_log_bytes) {
  return std::make_unique<LocalAllocator>(slots, max_log_bytes);
}

}  // namespace dsv3::server
