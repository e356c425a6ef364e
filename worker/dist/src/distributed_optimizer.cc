#include "dsv3/dist/distributed_optimizer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace dsv3::dist {
namespace {

using nlohmann::json;

int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

}  // namespace

struct DistributedOptimizer::Bucket {
  int64_t start = 0, numel = 0, chunk = 0;  // region of the flat buffer (padded); chunk = numel / group size
  int64_t shard_offset = 0;                 // where this rank's chunk sits in the shard buffers
  int unit = -1;                            // stage 3: the layer whose parameters it holds
  std::vector<size_t> params;
  size_t pending = 0;
  bool launched = false;
  WorkHandle work;
  torch::Tensor staging, received;  // stage 2: the bucket's gradients in flight
  torch::Tensor full;               // stage 3: the gathered parameters (compute dtype) while acquired
};

struct DistributedOptimizer::Group {
  ParamGroup spec;
  std::vector<int64_t> offset;     // per parameter, in the flat buffer (padded layout)
  std::vector<int64_t> numel;      // per parameter (stage 3 frees the tensors themselves)
  std::vector<std::vector<int64_t>> shape;
  std::vector<size_t> bucket_of;   // per parameter
  std::vector<char> seen;          // per parameter: gradient arrived this micro-step
  std::vector<Bucket> buckets;
  size_t next_launch = 0;
  bool reducing = false;           // this micro-step's gradients are reduced
  int64_t total = 0;               // flat elements, padding included
  // Master weights: the whole flat buffer, or (stage 3) only this rank's chunks, in shard
  // order; compute_shard is their copy in the compute dtype (the same tensor in fp32).
  torch::Tensor flat_master, compute_shard;
  torch::Tensor flat_grad;                 // stages 0 and 1
  torch::Tensor shard_grad;              // stages 1 and 2: this rank's chunks
  torch::Tensor exp_avg, exp_avg_sq, decay;  // over the update range
  int64_t update_numel = 0;
  torch::Device state_device = torch::kCPU;

  int rank() const { return spec.comm->rank(); }
  int size() const { return spec.comm->size(); }

  // The elements this rank updates in bucket b: (first flat index, count, state offset).
  struct Range {
    int64_t flat, count, state;
  };
  Range UpdateRange(const Bucket& b, int stage) const {
    if (stage == 0) return {b.start, b.numel, b.start};
    return {b.start + rank() * b.chunk, b.chunk, b.shard_offset};
  }
  // The elements this rank owns (stage 0 too: for norms and checkpoints).
  Range OwnedRange(const Bucket& b) const { return {b.start + rank() * b.chunk, b.chunk, b.shard_offset}; }
  torch::Tensor GradOf(const Bucket& b, int stage) const {
    const Range r = UpdateRange(b, stage);
    return stage == 0 ? flat_grad.narrow(0, r.flat, r.count) : shard_grad.narrow(0, r.state, r.count);
  }
  // This rank's updated chunk of bucket b in the master buffer.
  torch::Tensor MasterChunk(const Bucket& b, int stage) const {
    if (stage == 3) return flat_master.narrow(0, b.shard_offset, b.chunk);
    const Range r = UpdateRange(b, stage);
    return flat_master.narrow(0, r.flat, r.count);
  }
  torch::Tensor OwnedGrad(const Bucket& b, int stage) const {
    const Range r = OwnedRange(b);
    return stage == 0 ? flat_grad.narrow(0, r.flat, r.count) : shard_grad.narrow(0, r.state, r.count);
  }

  // Pieces of parameters inside [flat, flat + count): (param, element offset in the
  // parameter, count, offset from `flat`).
  struct Piece {
    size_t param;
    int64_t in_param, count, at;
  };
  std::vector<Piece> PiecesIn(const Bucket& b, int64_t flat, int64_t count) const {
    std::vector<Piece> out;
    for (size_t p : b.params) {
      const int64_t lo = std::max(flat, offset[p]);
      const int64_t hi = std::min(flat + count, offset[p] + numel[p]);
      if (lo < hi) out.push_back({p, lo - offset[p], hi - lo, lo - flat});
    }
    return out;
  }
};

DistributedOptimizer::DistributedOptimizer(std::vector<ParamGroup> groups, OptimizerOptions optimizer,
                                           ShardingOptions sharding, Communicator* world)
    : opt_(std::move(optimizer)), sh_(sharding), world_(world) {
  if (sh_.zero_stage < 0 || sh_.zero_stage > 3) {
    throw std::runtime_error("/distributed/zero_stage: " + std::to_string(sh_.zero_stage) + " is not 0, 1, 2 or 3");
  }
  torch::NoGradGuard no_grad;
  for (auto& spec : groups) {
    auto g = std::make_unique<Group>();
    g->spec = std::move(spec);
    const int64_t n = g->size();
    const size_t P = g->spec.params.size();
    g->offset.assign(P, 0);
    g->bucket_of.assign(P, 0);
    g->seen.assign(P, 0);
    for (const auto& e : g->spec.params) {
      g->numel.push_back(e.master.numel());
      g->shape.push_back(e.master.sizes().vec());
    }
    // Buckets in backward order: the last registered parameters get their gradients first.
    Bucket current;
    int64_t used = 0;
    const auto close = [&] {
      if (current.params.empty()) return;
      current.start = g->total;
      current.numel = RoundUp(std::max<int64_t>(used, 1), n);
      current.chunk = current.numel / n;
      int64_t at = current.start;
      for (size_t p : current.params) {
        g->offset[p] = at;
        g->bucket_of[p] = g->buckets.size();
        at += g->numel[p];
      }
      g->total += current.numel;
      g->buckets.push_back(current);
      current = Bucket();
      used = 0;
    };
    for (size_t i = P; i-- > 0;) {
      const int64_t numel = g->numel[i];
      const int unit = sh_.zero_stage == 3 ? g->spec.params[i].unit : -1;  // a bucket never spans two layers
      if (!current.params.empty() && (used + numel > sh_.bucket_elements || unit != current.unit)) close();
      current.unit = unit;
      current.params.push_back(i);
      used += numel;
    }
    close();
    int64_t shard = 0;
    for (auto& b : g->buckets) {
      b.shard_offset = shard;
      shard += b.chunk;
    }
    const torch::Device device = P > 0 ? g->spec.params[0].master.device() : torch::Device(torch::kCPU);
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
    if (sh_.zero_stage == 3) {
      // Only this rank's chunks of the master; the parameters are released below.
      g->flat_master = torch::zeros({shard}, f32);
      for (auto& b : g->buckets) {
        const Group::Range owned = g->OwnedRange(b);
        for (const auto& piece : g->PiecesIn(b, owned.flat, owned.count)) {
          g->flat_master.narrow(0, b.shard_offset + piece.at, piece.count)
              .copy_(g->spec.params[piece.param].master.reshape({-1}).narrow(0, piece.in_param, piece.count));
        }
      }
      const bool mixed = P > 0 && !g->spec.params[0].compute.is_same(g->spec.params[0].master);
      g->compute_shard = mixed ? g->flat_master.to(g->spec.params[0].compute.scalar_type()) : g->flat_master;
      for (auto& e : g->spec.params) {
        if (mixed) e.master.set_data(torch::empty({0}, e.master.options()));
      }
    } else {
      // The flat master, its parameters as views into it.
      g->flat_master = torch::zeros({g->total}, f32);
      for (size_t p = 0; p < P; ++p) {
        auto& e = g->spec.params[p];
        torch::Tensor view = g->flat_master.narrow(0, g->offset[p], g->numel[p]).view(g->shape[p]);
        view.copy_(e.master);
        const bool same = e.compute.is_same(e.master);
        e.master.set_data(view);
        if (same) e.compute = e.master;
      }
    }
    if (sh_.zero_stage <= 1) {
      g->flat_grad = torch::zeros({g->total}, f32);
      for (size_t p = 0; p < P; ++p) {
        auto& e = g->spec.params[p];
        e.master.mutable_grad() = g->flat_grad.narrow(0, g->offset[p], g->numel[p]).view(g->shape[p]);
      }
    }
    if (sh_.zero_stage >= 1) g->shard_grad = torch::zeros({shard}, f32);
    g->update_numel = sh_.zero_stage == 0 ? g->total : shard;
    g->state_device = sh_.offload ? torch::Device(torch::kCPU) : device;
    const auto state_opts = torch::TensorOptions().dtype(torch::kFloat).device(g->state_device);
    if (opt_.type != "sgd") {
      g->exp_avg = torch::zeros({g->update_numel}, state_opts);
      g->exp_avg_sq = torch::zeros({g->update_numel}, state_opts);
    }
    g->decay = torch::zeros({g->update_numel}, state_opts);
    for (auto& b : g->buckets) {
      const Group::Range r = g->UpdateRange(b, sh_.zero_stage);
      for (const auto& piece : g->PiecesIn(b, r.flat, r.count)) {
        if (g->spec.params[piece.param].decay) g->decay.narrow(0, r.state + piece.at, piece.count).fill_(1.0);
      }
    }
    groups_.push_back(std::move(g));
  }
  // Gradient-ready hooks on the tensors backward fills.
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t pi = 0; pi < groups_[gi]->spec.params.size(); ++pi) {
      const torch::Tensor& compute = groups_[gi]->spec.params[pi].compute;
      auto acc = torch::autograd::impl::grad_accumulator(compute);
      if (!acc) throw std::runtime_error("parameter " + groups_[gi]->spec.params[pi].name + " does not require grad");
      acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [this, gi, pi](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
            OnGradReady(gi, pi);
            return outputs;
          }));
      accumulators_.push_back(std::move(acc));
    }
  }
  if (sh_.zero_stage == 3) {
    // Layer parameters exist only between Acquire and Release; the rest stays gathered.
    // (After the hooks: a gradient accumulator records its parameter's shape when created.)
    for (auto& g : groups_) {
      for (auto& b : g->buckets) {
        if (b.unit < 0) {
          GatherBucket(*g, b, true);
        } else {
          for (size_t p : b.params) g->spec.params[p].compute.set_data(torch::empty({0}, g->compute_shard.options()));
        }
      }
    }
  }
}

DistributedOptimizer::~DistributedOptimizer() {
  for (auto& acc : accumulators_) acc->post_hooks().clear();
}

void DistributedOptimizer::BeginMicroStep(bool last) {
  last_micro_ = last;
  for (auto& g : groups_) {
    g->reducing = last || sh_.zero_stage >= 2;
    g->next_launch = 0;
    std::fill(g->seen.begin(), g->seen.end(), 0);
    for (auto& b : g->buckets) {
      b.pending = b.params.size();
      b.launched = false;
      b.work.reset();
    }
  }
}

void DistributedOptimizer::OnGradReady(size_t gi, size_t pi) {
  torch::NoGradGuard no_grad;
  Group& g = *groups_[gi];
  ParamEntry& e = g.spec.params[pi];
  if (g.seen[pi]) return;
  g.seen[pi] = 1;
  const bool mixed = !e.compute.is_same(e.master);
  if (mixed && sh_.zero_stage <= 1) {
    // Fold the low-precision gradient into the fp32 master gradient (a view of flat_grad).
    torch::Tensor& cg = e.compute.mutable_grad();
    if (cg.defined()) {
      e.master.mutable_grad().add_(cg.to(torch::kFloat));
      cg = torch::Tensor();
    }
  }
  if (!g.reducing) return;
  Bucket& b = g.buckets[g.bucket_of[pi]];
  if (--b.pending == 0 && sh_.overlap_grad_reduce) LaunchReady(g);
}

void DistributedOptimizer::LaunchReady(Group& g) {
  while (g.next_launch < g.buckets.size() && g.buckets[g.next_launch].pending == 0) Launch(g, g.next_launch++);
}

void DistributedOptimizer::Launch(Group& g, size_t bi) {
  Bucket& b = g.buckets[bi];
  if (b.launched) return;
  b.launched = true;
  if (g.size() == 1) return;  // nothing to reduce; FinishBackward still averages
  if (sh_.zero_stage == 0) {
    b.work = g.spec.comm->AllReduce(g.flat_grad.narrow(0, b.start, b.numel));
  } else if (sh_.zero_stage == 1) {
    b.work = g.spec.comm->ReduceScatter(g.shard_grad.narrow(0, b.shard_offset, b.chunk),
                                        g.flat_grad.narrow(0, b.start, b.numel));
  } else {
    b.staging = StageBucket(g, b);
    b.received = torch::empty({b.chunk}, b.staging.options());
    b.work = g.spec.comm->ReduceScatter(b.received, b.staging);
  }
}

torch::Tensor DistributedOptimizer::StageBucket(Group& g, Bucket& b) {
  // Stage 2: the bucket's gradients copied out of the parameters, which then drop theirs.
  torch::Tensor staging = torch::zeros({b.numel}, g.flat_master.options());
  for (size_t p : b.params) {
    ParamEntry& e = g.spec.params[p];
    torch::Tensor& grad = e.compute.mutable_grad();
    if (grad.defined()) {
      staging.narrow(0, g.offset[p] - b.start, g.numel[p]).copy_(grad.reshape({-1}));
      grad = torch::Tensor();
    }
  }
  return staging;
}

void DistributedOptimizer::FinishBackward() {
  torch::NoGradGuard no_grad;
  for (auto& gp : groups_) {
    Group& g = *gp;
    if (!g.reducing) continue;
    for (size_t bi = 0; bi < g.buckets.size(); ++bi) Launch(g, bi);
    g.next_launch = g.buckets.size();
    const double scale = 1.0 / sh_.grad_divisor;
    for (auto& b : g.buckets) {
      if (b.work) b.work->Wait();
      if (sh_.zero_stage == 0) {
        g.flat_grad.narrow(0, b.start, b.numel).mul_(scale);
      } else if (sh_.zero_stage == 1) {
        torch::Tensor shard = g.shard_grad.narrow(0, b.shard_offset, b.chunk);
        if (g.size() == 1) shard.copy_(g.flat_grad.narrow(0, b.start, b.numel));
        shard.mul_(scale);
      } else {
        if (g.size() == 1) b.received = StageBucket(g, b);
        g.shard_grad.narrow(0, b.shard_offset, b.chunk).add_(b.received, scale);
        b.staging = b.received = torch::Tensor();
      }
      b.work.reset();
    }
  }
}

double DistributedOptimizer::GradNorm() {
  torch::NoGradGuard no_grad;
  // Per-chunk norms (no copy of the gradients), squared and summed in double.
  std::vector<torch::Tensor> norms;
  for (auto& g : groups_) {
    for (auto& b : g->buckets) norms.push_back(g->OwnedGrad(b, sh_.zero_stage).norm());
  }
  if (norms.empty()) return 0;
  torch::Tensor sq = torch::stack(norms).to(torch::kDouble).square().sum().reshape({1});
  if (world_->size() > 1) world_->AllReduce(sq)->Wait();
  return std::sqrt(sq.item<double>());
}

void DistributedOptimizer::ScaleGrads(double factor) {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) (sh_.zero_stage == 0 ? g->flat_grad : g->shard_grad).mul_(factor);
}

void DistributedOptimizer::ZeroGrad() {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    if (g->flat_grad.defined()) g->flat_grad.zero_();
    if (g->shard_grad.defined()) g->shard_grad.zero_();
    for (auto& e : g->spec.params) {
      if (!e.compute.is_same(e.master) || sh_.zero_stage >= 2) e.compute.mutable_grad() = torch::Tensor();
    }
  }
}

void DistributedOptimizer::Step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double b1 = opt_.beta1, b2 = opt_.beta2;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(step_));
  const double bc2 = 1 - std::pow(b2, static_cast<double>(step_));
  for (auto& gp : groups_) {
    Group& g = *gp;
    std::vector<WorkHandle> gathers(g.buckets.size());
    for (size_t bi = 0; bi < g.buckets.size(); ++bi) {
      Bucket& b = g.buckets[bi];
      const Group::Range r = g.UpdateRange(b, sh_.zero_stage);
      torch::Tensor master = g.MasterChunk(b, sh_.zero_stage);
      torch::Tensor p = master, grad = g.GradOf(b, sh_.zero_stage);
      if (g.state_device != master.device()) {  // offload: the update runs in host memory
        p = master.to(g.state_device);
        grad = grad.to(g.state_device);
      }
      const torch::Tensor decay = g.decay.narrow(0, r.state, r.count);
      const double wd = opt_.weight_decay;
      // The same arithmetic as torch::optim's AdamW / Adam / SGD (without momentum).
      if (opt_.type == "adamw") {
        if (wd != 0) p.addcmul_(p, decay, -lr * wd);
      } else if (wd != 0) {
        grad = grad + decay * p * wd;
      }
      if (opt_.type == "sgd") {
        p.add_(grad, -lr);
      } else {
        torch::Tensor m = g.exp_avg.narrow(0, r.state, r.count), v = g.exp_avg_sq.narrow(0, r.state, r.count);
        m.mul_(b1).add_(grad, 1 - b1);
        v.mul_(b2).addcmul_(grad, grad, 1 - b2);
        const torch::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(opt_.eps);
        p.addcdiv_(m, denom, -lr / bc1);
      }
      if (!p.is_same(master)) master.copy_(p);
      if (sh_.zero_stage == 3) {
        // Layers gather their new weights when they next run; the always-gathered buckets
        // are refreshed now.
        if (!g.compute_shard.is_same(g.flat_master)) g.compute_shard.narrow(0, b.shard_offset, b.chunk).copy_(master);
        if (b.unit < 0) GatherBucket(g, b, !sh_.overlap_param_gather);
        gathers[bi] = b.work;
        b.work.reset();
      } else if (sh_.zero_stage >= 1 && g.size() > 1) {
        // Every rank's updated chunk back into everyone's flat master; the next bucket's
        // update overlaps this gather unless overlap_param_gather is off.
        const torch::Tensor mine = master.clone();
        gathers[bi] = g.spec.comm->AllGather(g.flat_master.narrow(0, b.start, b.numel), mine);
        if (!sh_.overlap_param_gather) gathers[bi]->Wait();
      }
    }
    for (size_t bi = 0; bi < g.buckets.size(); ++bi) {
      if (gathers[bi]) gathers[bi]->Wait();
      if (sh_.zero_stage == 3) continue;
      for (size_t p : g.buckets[bi].params) {
        ParamEntry& e = g.spec.params[p];
        if (!e.compute.is_same(e.master)) e.compute.copy_(e.master);
      }
    }
  }
  ZeroGrad();
}

std::vector<std::pair<std::string, torch::Tensor>> DistributedOptimizer::StateTensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  if (opt_.type == "sgd") return out;
  for (const auto& g : groups_) {
    std::vector<torch::Tensor> m, v;
    for (const auto& b : g->buckets) {
      const Group::Range owned = g->OwnedRange(b);
      const int64_t at = sh_.zero_stage == 0 ? owned.flat : owned.state;
      m.push_back(g->exp_avg.narrow(0, at, owned.count));
      v.push_back(g->exp_avg_sq.narrow(0, at, owned.count));
    }
    out.emplace_back(g->spec.name + ".exp_avg", torch::cat(m).to(torch::kCPU));
    out.emplace_back(g->spec.name + ".exp_avg_sq", torch::cat(v).to(torch::kCPU));
  }
  return out;
}

std::map<std::string, std::string> DistributedOptimizer::StateMetadata() const {
  json meta = {{"optimizer", opt_.type}, {"step", step_}, {"zero_stage", sh_.zero_stage}, {"groups", json::object()}};
  for (const auto& g : groups_) {
    json pieces = json::array();
    int64_t saved = 0;
    for (const auto& b : g->buckets) {
      const Group::Range owned = g->OwnedRange(b);
      for (const auto& piece : g->PiecesIn(b, owned.flat, owned.count)) {
        const ParamEntry& e = g->spec.params[piece.param];
        pieces.push_back({e.name, e.full_offset + piece.in_param, piece.count, saved + piece.at});
      }
      saved += owned.count;
    }
    meta["groups"][g->spec.name] = {{"pieces", pieces}, {"numel", saved}};
  }
  return {{"dsv3_optimizer", meta.dump()}};
}

void DistributedOptimizer::LoadState(int ranks, const ShardReader& read_rank) {
  torch::NoGradGuard no_grad;
  // What this rank needs: every piece of its update range, by parameter name.
  struct Need {
    Group* group;
    int64_t full_lo, count, state;  // full-parameter element range -> state offset
  };
  std::map<std::string, std::vector<Need>> needs;
  int64_t needed = 0;
  for (auto& g : groups_) {
    for (const auto& b : g->buckets) {
      const Group::Range r = g->UpdateRange(b, sh_.zero_stage);
      for (const auto& piece : g->PiecesIn(b, r.flat, r.count)) {
        const ParamEntry& e = g->spec.params[piece.param];
        needs[e.name].push_back({g.get(), e.full_offset + piece.in_param, piece.count, r.state + piece.at});
        needed += piece.count;
      }
    }
  }
  int64_t found = 0, step = 0;
  std::string type;
  for (int r = 0; r < ranks; ++r) {
    auto [tensors, metadata] = read_rank(r);
    const auto it = metadata.find("dsv3_optimizer");
    if (it == metadata.end()) throw std::runtime_error("optimizer shard of rank " + std::to_string(r) + " has no layout");
    const json meta = json::parse(it->second);
    type = meta.at("optimizer").get<std::string>();
    if (type != opt_.type) {
      throw std::runtime_error("/training/optimizer: the checkpoint's optimizer state is for \"" + type +
                               "\", the config asks for \"" + opt_.type + "\"");
    }
    step = std::max(step, meta.at("step").get<int64_t>());
    if (opt_.type == "sgd") continue;
    for (const auto& [group_name, gm] : meta.at("groups").items()) {
      const torch::Tensor m = tensors.at(group_name + ".exp_avg"), v = tensors.at(group_name + ".exp_avg_sq");
      for (const auto& piece : gm.at("pieces")) {
        const std::string name = piece[0].get<std::string>();
        const int64_t lo = piece[1].get<int64_t>(), count = piece[2].get<int64_t>(), at = piece[3].get<int64_t>();
        const auto need = needs.find(name);
        if (need == needs.end()) continue;
        for (const Need& n : need->second) {
          const int64_t a = std::max(lo, n.full_lo), z = std::min(lo + count, n.full_lo + n.count);
          if (a >= z) continue;
          n.group->exp_avg.narrow(0, n.state + (a - n.full_lo), z - a).copy_(m.narrow(0, at + (a - lo), z - a));
          n.group->exp_avg_sq.narrow(0, n.state + (a - n.full_lo), z - a).copy_(v.narrow(0, at + (a - lo), z - a));
          found += z - a;
        }
      }
    }
  }
  if (opt_.type != "sgd" && found != needed) {
    throw std::runtime_error("the checkpoint's optimizer state covers " + std::to_string(found) + " of the " +
                             std::to_string(needed) + " parameter elements this rank updates (a different model?)");
  }
  step_ = step;
}

void DistributedOptimizer::GatherBucket(Group& g, Bucket& b, bool wait) {
  // The bucket's parameters (compute dtype) from every rank's chunk; the parameters become
  // views into it.
  if (!b.full.defined()) {
    b.full = torch::empty({b.numel}, g.compute_shard.options());
    for (size_t p : b.params) {
      g.spec.params[p].compute.set_data(b.full.narrow(0, g.offset[p] - b.start, g.numel[p]).view(g.shape[p]));
    }
  }
  b.work = g.spec.comm->AllGather(b.full, g.compute_shard.narrow(0, b.shard_offset, b.chunk));
  if (wait) {
    b.work->Wait();
    b.work.reset();
  }
}

void DistributedOptimizer::Acquire(int unit) {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<Group*, Bucket*>> gathering;
  for (auto& g : groups_) {
    for (auto& b : g->buckets) {
      if (b.unit != unit) continue;
      GatherBucket(*g, b, false);
      gathering.push_back({g.get(), &b});
    }
  }
  for (auto& [g, b] : gathering) {
    b->work->Wait();
    b->work.reset();
  }
}

void DistributedOptimizer::Release(int unit) {
  for (auto& g : groups_) {
    for (auto& b : g->buckets) {
      if (b.unit != unit || !b.full.defined()) continue;
      for (size_t p : b.params) g->spec.params[p].compute.set_data(torch::empty({0}, b.full.options()));
      b.full = torch::Tensor();
    }
  }
}

void DistributedOptimizer::WithFullMaster(const std::function<void()>& fn) {
  if (sh_.zero_stage != 3) return fn();
  torch::NoGradGuard no_grad;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> restore;  // parameter, its data before
  std::vector<torch::Tensor> fulls;
  for (auto& g : groups_) {
    torch::Tensor full = torch::empty({g->total}, g->flat_master.options());
    std::vector<WorkHandle> works;
    for (auto& b : g->buckets) {
      works.push_back(g->spec.comm->AllGather(full.narrow(0, b.start, b.numel),
                                              g->flat_master.narrow(0, b.shard_offset, b.chunk)));
    }
    for (auto& w : works) w->Wait();
    for (size_t p = 0; p < g->spec.params.size(); ++p) {
      torch::Tensor& master = g->spec.params[p].master;
      restore.push_back({master, master.data()});
      master.set_data(full.narrow(0, g->offset[p], g->numel[p]).view(g->shape[p]));
    }
    fulls.push_back(full);
  }
  std::exception_ptr error;
  try {
    fn();
  } catch (...) {
    error = std::current_exception();
  }
  for (auto& [param, data] : restore) param.set_data(data);
  if (error) std::rethrow_exception(error);
}

int64_t DistributedOptimizer::param_bytes() const {
  int64_t n = 0;
  for (const auto& g : groups_) {
    n += g->flat_master.numel() * 4;
    if (g->compute_shard.defined() && !g->compute_shard.is_same(g->flat_master)) {
      n += g->compute_shard.numel() * g->compute_shard.element_size();
    }
    for (const auto& b : g->buckets) {
      if (b.full.defined()) n += b.full.numel() * b.full.element_size();
    }
  }
  return n;
}

void ShardedLayers::Acquire(model::DecoderLayerImpl& layer) {
  if (const int unit = Unit(layer); unit >= 0) optimizer_->Acquire(unit);
}

void ShardedLayers::Release(model::DecoderLayerImpl& layer) {
  if (const int unit = Unit(layer); unit >= 0) optimizer_->Release(unit);
}

int ShardedLayers::Unit(const model::DecoderLayerImpl& layer) const {
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i] == &layer) return static_cast<int>(i);
  }
  return -1;  // an MTP block: always gathered
}

int64_t DistributedOptimizer::state_bytes() const {
  int64_t n = 0;
  for (const auto& g : groups_) {
    if (g->exp_avg.defined()) n += 2 * g->exp_avg.numel() * 4;
  }
  return n;
}

int64_t DistributedOptimizer::grad_bytes() const {
  int64_t n = 0;
  for (const auto& g : groups_) {
    if (g->flat_grad.defined()) n += g->flat_grad.numel() * 4;
    if (g->shard_grad.defined()) n += g->shard_grad.numel() * 4;
  }
  return n;
}

}  // namespace dsv3::dist
