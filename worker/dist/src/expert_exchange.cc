#include <stdexcept>

#include "dsv3/dist/expert_parallel.h"

namespace dsv3::dist {
namespace {

class CommExchange final : public model::ExpertExchange {
 public:
  explicit CommExchange(Communicator* comm) : comm_(comm) {}
  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  torch::Tensor Exchange(const torch::Tensor& x, const std::vector<int64_t>& send_rows,
                         const std::vector<int64_t>& recv_rows) override {
    int64_t rows = 0;
    for (int64_t r : recv_rows) rows += r;
    std::vector<int64_t> shape = x.sizes().vec();
    shape[0] = rows;
    torch::Tensor out = torch::empty(shape, x.options());
    comm_->AllToAll(out, x.contiguous(), recv_rows, send_rows)->Wait();
    return out;
  }
  // Counts live on the CPU; NCCL moves only device memory.
  torch::Tensor ExchangeCounts(const torch::Tensor& counts) override {
    const int64_t chunk = counts.numel() / size();
    const std::vector<int64_t> split(static_cast<size_t>(size()), chunk);
    const torch::Tensor in = comm_->backend() == "nccl" ? counts.to(torch::kCUDA) : counts.contiguous();
    torch::Tensor out = torch::empty_like(in);
    comm_->AllToAll(out, in, split, split)->Wait();
    return out.to(counts.device());
  }

 private:
  Communicator* comm_;
};

}  // namespace

ExpertParallelGroups MakeExpertParallelGroups(Communicator& world, int ep) {
  const int n = world.size(), r = world.rank();
  if (ep < 1 || n % ep != 0) {
    throw std::runtime_error("/distributed/expert_parallel_size: " + std::to_string(ep) +
                             " does not divide the data-parallel size " + std::to_string(n));
  }
  ExpertParallelGroups g;
  std::vector<int> same_group, same_experts;
  for (int i = (r / ep) * ep; i < (r / ep + 1) * ep; ++i) same_group.push_back(i);
  for (int i = r % ep; i < n; i += ep) same_experts.push_back(i);
  g.ep = world.Subgroup(same_group, "ep" + std::to_string(r / ep));
  g.replicas = world.Subgroup(same_experts, "experts" + std::to_string(r % ep));
  return g;
}

std::shared_ptr<model::ExpertExchange> MakeExpertExchange(Communicator* ep) {
  return std::make_shared<CommExchange>(ep);
}

}  // namespace dsv3::dist
