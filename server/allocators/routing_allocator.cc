// One allocator for the daemon that sends each job to the primary allocator (local, static
// or slurm) or, when its plan asks for Slurm (slurm.enabled in its config), to Slurm.
#include <mutex>

#include "allocators/slurm_allocator.h"

namespace dsv3::server {
namespace {

class RoutingAllocator final : public Allocator {
 public:
  RoutingAllocator(std::unique_ptr<Allocator> primary, std::unique_ptr<Allocator> slurm, std::string why_no_slurm)
      : primary_(std::move(primary)), slurm_(std::move(slurm)), why_no_slurm_(std::move(why_no_slurm)) {}

  std::string Name() const override { return primary_->Name(); }
  int TotalSlots() const override { return primary_->TotalSlots(); }
  int FreeSlots() const override { return primary_->FreeSlots(); }
  void SetExitCallback(ExitCallback cb) override {
    primary_->SetExitCallback(cb);
    if (slurm_) slurm_->SetExitCallback(cb);
  }
  void SetAllocationCallback(AllocationCallback cb) override {
    primary_->SetAllocationCallback(cb);
    if (slurm_) slurm_->SetAllocationCallback(cb);
  }
  std::optional<FieldProblem> CanRun(const JobRecord& job) const override {
    if (Wants(job) && !slurm_) {
      return FieldProblem{"/slurm/enabled", "true, but this dsv3d cannot reach Slurm: " + why_no_slurm_,
                          kProblemNoSlurm};
    }
    return For(job).CanRun(job);
  }
  std::string WhyNotPlaced(const JobRecord& job) const override { return For(job).WhyNotPlaced(job); }
  std::optional<double> HostMemoryBytes(const JobRecord& job) const override { return For(job).HostMemoryBytes(job); }
  std::string DescribeLaunch(const LaunchSpec& spec) const override { return For(spec.job).DescribeLaunch(spec); }

  std::optional<Placement> Reserve(const JobRecord& job) override {
    if (Wants(job) && !slurm_) return std::nullopt;
    Allocator& a = For(job);
    auto p = a.Reserve(job);
    if (p) Remember(job.id, a);
    return p;
  }
  absl::StatusOr<std::vector<LaunchedRank>> Launch(const LaunchSpec& spec) override { return Of(spec.job_id).Launch(spec); }
  void Signal(int64_t job_id, int signal) override { Of(job_id).Signal(job_id, signal); }
  void Kill(int64_t job_id) override { Of(job_id).Kill(job_id); }
  void Release(int64_t job_id) override {
    Of(job_id).Release(job_id);
    std::lock_guard<std::mutex> lock(mu_);
    routes_.erase(job_id);
  }
  std::vector<int> Adopt(const JobRecord& job, const std::vector<RankRecord>& ranks, const std::string& external_id) override {
    if (Wants(job) && !slurm_) return {};
    Allocator& a = For(job);
    Remember(job.id, a);
    return a.Adopt(job, ranks, external_id);
  }
  int LiveRanks(int64_t job_id) const override { return Of(job_id).LiveRanks(job_id); }
  std::vector<NodeInfo> Nodes() const override {
    auto nodes = primary_->Nodes();
    if (slurm_) {
      for (auto& n : slurm_->Nodes()) {
        n.name = "slurm:" + n.name;
        nodes.push_back(std::move(n));
      }
    }
    return nodes;
  }

 private:
  // The job's plan says where it runs; a daemon whose own allocator is Slurm sends it there.
  bool Wants(const JobRecord& job) const { return primary_->Name() != "slurm" && job.plan.WantsSlurm(); }
  Allocator& For(const JobRecord& job) const { return Wants(job) && slurm_ ? *slurm_ : *primary_; }
  void Remember(int64_t job_id, Allocator& a) {
    std::lock_guard<std::mutex> lock(mu_);
    routes_[job_id] = &a;
  }
  Allocator& Of(int64_t job_id) const {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = routes_.find(job_id);
    return it == routes_.end() ? *primary_ : *it->second;
  }

  std::unique_ptr<Allocator> primary_, slurm_;
  const std::string why_no_slurm_;
  mutable std::mutex mu_;
  std::map<int64_t, Allocator*> routes_;
};

}  // namespace

std::unique_ptr<Allocator> MakeRoutingAllocator(std::unique_ptr<Allocator> primary, std::unique_ptr<Allocator> slurm,
                                                std::string slurm_unavailable_reason) {
  return std::make_unique<RoutingAllocator>(std::move(primary), std::move(slurm), std::move(slurm_unavailable_reason));
}

}  // namespace dsv3::server
