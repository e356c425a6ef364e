// DeepSeekMoE: router and experts, eq. (12)-(20) of arXiv 2412.19437.
#include <cmath>
#include <limits>

#include "dsv3/common/check.h"
#include "dsv3/model/layers.h"
#include "fused.h"

namespace dsv3::model {
namespace {

// Keeps, for every expert, the `capacity` assignments with the highest gates; the rest
// (the overflow, lowest gates first) are dropped. expert_XK / gate_XK -> keep_XK.
torch::Tensor CapacityKeep(const torch::Tensor& expert_XK, const torch::Tensor& gate_XK, int64_t num_experts,
                           int64_t capacity) {
  const torch::Tensor expert = expert_XK.flatten();
  const torch::Tensor gate = gate_XK.flatten();
  // Sort by gate descending, then stably by expert: each expert's assignments end up
  // contiguous and ordered by gate.
  const torch::Tensor by_gate = std::get<1>(torch::sort(gate, c10::optional<bool>(true), 0, /*descending=*/true));
  const torch::Tensor by_expert =
      std::get<1>(torch::sort(expert.index_select(0, by_gate), c10::optional<bool>(true), 0, /*descending=*/false));
  const torch::Tensor order = by_gate.index_select(0, by_expert);
  const torch::Tensor sorted_expert = expert.index_select(0, order);
  const torch::Tensor counts = torch::bincount(sorted_expert, {}, num_experts);
  const torch::Tensor starts = counts.cumsum(0) - counts;
  const torch::Tensor rank = torch::arange(expert.numel(), expert.options()) - starts.index_select(0, sorted_expert);
  torch::Tensor keep = torch::empty_like(expert, expert.options().dtype(torch::kBool));
  keep.index_put_({order}, rank < capacity);
  return keep.view_as(expert_XK);
}

}  // namespace

RouterImpl::RouterImpl(const config::ModelConfig& cfg) : moe_(cfg.moe), fused_(cfg.fused_kernels) {
  weight = register_parameter("weight", torch::empty({moe_.num_experts, cfg.mla.d_model}));
  e_score_correction_bias = register_buffer("e_score_correction_bias", torch::zeros({moe_.num_experts}));
}

Routing RouterImpl::Route(const torch::Tensor& x_XD, double noise_std, bool apply_capacity) {
  const int64_t X = x_XD.size(0), E = moe_.num_experts, k = moe_.num_experts_per_token;
  // Affinities in fp32: routing decisions must not flip with the activation precision.
  const auto precision = UpcastType(x_XD.scalar_type());
  torch::Tensor logits_XE = torch::matmul(x_XD.to(precision), weight.to(precision).t());
  if (noise_std > 0) logits_XE = logits_XE + torch::randn_like(logits_XE) * noise_std;
  const bool sigmoid = moe_.score_func == "sigmoid";
  // eq. (15): s = sigmoid(u^T e) in V3; softmax over experts (with temperature) otherwise.
  const torch::Tensor scores_XE =
      sigmoid ? torch::sigmoid(logits_XE) : torch::softmax(logits_XE / moe_.router_temperature, -1);
  // eq. (16): the bias only decides which experts are selected.
  torch::Tensor select_XE = scores_XE;
  if (moe_.use_aux_loss_free) select_XE = scores_XE + e_score_correction_bias.to(precision).unsqueeze(0);
  if (moe_.n_group > 1) {
    // Node-limited routing: a group's score is the sum of its two best experts; only the
    // topk_group best groups stay eligible.
    const int64_t G = moe_.n_group;
    const torch::Tensor group_score_XG = std::get<0>(select_XE.view({X, G, E / G}).topk(2, -1)).sum(-1);
    const torch::Tensor top_groups = std::get<1>(group_score_XG.topk(moe_.topk_group, -1));
    const torch::Tensor group_mask_XG = torch::zeros_like(group_score_XG).scatter(1, top_groups, 1.0);
    const torch::Tensor expert_mask_XE = group_mask_XG.unsqueeze(-1).expand({X, G, E / G}).reshape({X, E});
    select_XE = select_XE.masked_fill(expert_mask_XE == 0, -std::numeric_limits<float>::infinity());
  }
  Routing r;
  r.expert_XK = std::get<1>(select_XE.topk(k, -1));
  r.gate_XK = scores_XE.gather(1, r.expert_XK);  // eq. (13): gates from s, never s + b
  if (moe_.norm_topk_prob && k > 1) r.gate_XK = r.gate_XK / (r.gate_XK.sum(-1, true) + 1e-20);
  r.gate_XK = r.gate_XK * moe_.routed_scaling_factor;
  r.probs_XE = sigmoid ? scores_XE / scores_XE.sum(-1, true) : scores_XE;  // eq. (19): s'
  if (apply_capacity && moe_.capacity_factor > 0) {
    const double per_expert = static_cast<double>(X * k) / static_cast<double>(E) * moe_.capacity_factor;
    const int64_t capacity =
        std::max<int64_t>(moe_.min_expert_capacity, static_cast<int64_t>(std::ceil(per_expert)));
    r.keep_XK = UseFused(fused_, x_XD) ? kernels::CapacityKeep(r.expert_XK, r.gate_XK.detach(), E, capacity)
                                       : CapacityKeep(r.expert_XK, r.gate_XK.detach(), E, capacity);
  } else {
    r.keep_XK = torch::ones_like(r.expert_XK, r.expert_XK.options().dtype(torch::kBool));
  }
  return r;
}

GroupedExpertsImpl::GroupedExpertsImpl(int64_t num_experts, int64_t dim, int64_t hidden) {
  gate_proj = register_parameter("gate_proj", torch::empty({num_experts, hidden, dim}));
  up_proj = register_parameter("up_proj", torch::empty({num_experts, hidden, dim}));
  down_proj = register_parameter("down_proj", torch::empty({num_experts, dim, hidden}));
}

MoEImpl::MoEImpl(const config::ModelConfig& cfg) : moe_(cfg.moe), fused_(cfg.fused_kernels) {
  const int64_t D = cfg.mla.d_model;
  gate = register_module("gate", Router(cfg));
  experts = register_module("experts", GroupedExperts(moe_.num_experts, D, moe_.expert_intermediate_size));
  if (moe_.num_shared_experts > 0) {
    // S shared experts of width F compute the same as one SwiGLU of width S*F (HF's layout).
    shared_experts = register_module(
        "shared_experts", FeedForward(D, moe_.num_shared_experts * moe_.shared_intermediate_size, fused_));
  }
  stats_.tokens_per_expert_E = torch::zeros({moe_.num_experts}, torch::kLong);
}

MoeOutput MoEImpl::forward(const torch::Tensor& x_BTD) {
  const int64_t B = x_BTD.size(0), T = x_BTD.size(1), D = x_BTD.size(2);
  const int64_t X = B * T, E = moe_.num_experts, k = moe_.num_experts_per_token;
  const torch::Tensor x_XD = x_BTD.reshape({X, D});
  const double noise = is_training() ? moe_.router_noise_std * noise_scale_ : 0.0;
  const Routing r = gate->Route(x_XD, noise, /*apply_capacity=*/is_training());

  torch::Tensor y_XD, counts_E;
  if (UseFused(fused_, x_XD)) {
    // Histogram, scan and scatter instead of sorts, one grouped GEMM per projection, and a
    // combine without index_add. On CUDA nothing here waits for the host (the plan's rows are
    // padded to X * k) unless expert parallelism needs the counts for its all-to-all.
    const kernels::DispatchPlan plan = kernels::PlanDispatch(r.expert_XK, r.keep_XK, E);
    counts_E = plan.counts_E;
    const torch::Tensor x_AD = kernels::Dispatch(x_XD, plan);
    torch::Tensor out_AD;
    if (exchange_) {
      // The all-to-all needs the counts on the host; the plan's rows past the kept ones (CUDA
      // pads them to X * k) stay out of the exchange and come back as zeros.
      const torch::Tensor counts = counts_E.to(torch::kCPU);
      const int64_t kept = counts.sum().item<int64_t>();
      out_AD = RunParallelExperts(x_AD.narrow(0, 0, kept), counts);
      if (kept < x_AD.size(0)) out_AD = torch::cat({out_AD, torch::zeros({x_AD.size(0) - kept, D}, out_AD.options())});
    } else {
      out_AD = RunGroupedExperts(x_AD, plan.offsets_E1);
    }
    y_XD = kernels::Combine(out_AD, r.gate_XK, plan);
  } else {
    // Dispatch: kept assignments grouped by expert, each expert runs on its tokens only.
    const torch::Tensor token_A = torch::arange(X, r.expert_XK.options()).repeat_interleave(k);
    const torch::Tensor kept_A = r.keep_XK.flatten().nonzero().squeeze(1);
    torch::Tensor expert_A = r.expert_XK.flatten().index_select(0, kept_A);
    const torch::Tensor order =
        std::get<1>(torch::sort(expert_A, c10::optional<bool>(true), 0, /*descending=*/false));
    expert_A = expert_A.index_select(0, order);
    const torch::Tensor token_sorted = token_A.index_select(0, kept_A).index_select(0, order);
    const torch::Tensor gate_sorted =
        r.gate_XK.flatten().index_select(0, kept_A).index_select(0, order).to(x_BTD.scalar_type());
    counts_E = torch::bincount(expert_A, {}, E).to(torch::kCPU);

    // The routed experts on their tokens (here, or on their expert-parallel ranks), then the
    // gated sum per token, eq. (12).
    const torch::Tensor x_AD = x_XD.index_select(0, token_sorted);
    const torch::Tensor out_AD = exchange_ ? RunParallelExperts(x_AD, counts_E) : RunExperts(x_AD, counts_E);
    y_XD = torch::zeros_like(x_XD).index_add(0, token_sorted, out_AD * gate_sorted.unsqueeze(1));
  }
  if (!shared_experts.is_empty()) y_XD = y_XD + shared_experts(x_XD);
  y_XD = torch::dropout(y_XD, moe_.dropout, is_training());

  MoeOutput out;
  out.y_BTD = y_XD.view({B, T, D});
  out.balance_loss = ComputeBalanceLoss(moe_, r, B, T);
  if (is_training() && !InRecompute()) {
    // Kept on the counts' device; TakeStats reads them once per step.
    if (stats_.tokens_per_expert_E.device() != counts_E.device()) {
      stats_.tokens_per_expert_E = stats_.tokens_per_expert_E.to(counts_E.device());
    }
    stats_.tokens_per_expert_E += counts_E;
    stats_.assignments += X * k;
  }
  return out;
}

torch::Tensor ComputeBalanceLoss(const config::MoeConfig& moe, const Routing& r, int64_t batch, int64_t seq) {
  const int64_t E = moe.num_experts, k = moe.num_experts_per_token, X = batch * seq;
  torch::Tensor loss = torch::zeros({}, r.probs_XE.options());
  if (moe.balance_loss_type != "none" && moe.router_aux_loss_weight > 0) {
    const torch::Tensor mean_prob_E = r.probs_XE.mean(0);
    if (moe.balance_loss_type == "load") {
      // Switch Transformer: E * sum_i f_i P_i, f_i the fraction of assignments to expert i
      // (before capacity), P_i its mean routing probability; 1 when perfectly balanced.
      const torch::Tensor fraction_E =
          torch::bincount(r.expert_XK.flatten(), {}, E).to(torch::kFloat) / static_cast<double>(X * k);
      loss = loss + moe.router_aux_loss_weight * static_cast<double>(E) * (fraction_E * mean_prob_E).sum();
    } else {
      // log E - H(mean routing distribution): 0 when tokens spread evenly on average.
      const torch::Tensor entropy = -(mean_prob_E * torch::log(mean_prob_E + 1e-20)).sum();
      loss = loss + moe.router_aux_loss_weight * (std::log(static_cast<double>(E)) - entropy);
    }
  }
  if (moe.seq_aux_loss_weight > 0) {
    // eq. (17)-(20), per sequence: f_i = E/(k T) * #tokens selecting i, P_i = mean s'_i.
    const torch::Tensor selected_BTE = torch::zeros({X, E}, r.probs_XE.options())
                                           .scatter(1, r.expert_XK, 1.0)
                                           .view({batch, seq, E});
    const torch::Tensor f_BE = selected_BTE.sum(1) * (static_cast<double>(E) / static_cast<double>(k * seq));
    const torch::Tensor p_BE = r.probs_XE.view({batch, seq, E}).mean(1);
    loss = loss + moe.seq_aux_loss_weight * (f_BE * p_BE).sum(-1).mean();
  }
  return loss;
}

namespace {

// The differentiable all-to-all: the gradient of an exchange is the reverse exchange.
struct ExchangeFunction : public torch::autograd::Function<ExchangeFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, ExpertExchange* ex,
                               const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
    ctx->saved_data["ex"] = reinterpret_cast<int64_t>(ex);
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    return ex->Exchange(x, send, recv);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto* ex = reinterpret_cast<ExpertExchange*>(ctx->saved_data["ex"].toInt());
    const auto send = ctx->saved_data["send"].toIntVector(), recv = ctx->saved_data["recv"].toIntVector();
    return {ex->Exchange(grad[0].contiguous(), recv, send), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

void MoEImpl::ShardExperts(std::shared_ptr<ExpertExchange> exchange) {
  const int64_t E = moe_.num_experts, size = exchange->size();
  DSV3_CHECK(E % size == 0) << size << " expert-parallel ranks for " << E << " experts";
  const int64_t local = E / size;
  expert_offset_ = exchange->rank() * local;
  torch::NoGradGuard no_grad;
  for (torch::Tensor* t : {&experts->gate_proj, &experts->up_proj, &experts->down_proj}) {
    t->set_data(t->narrow(0, expert_offset_, local).clone());
  }
  exchange_ = std::move(exchange);
}

torch::Tensor MoEImpl::RunExperts(const torch::Tensor& x_AD, const torch::Tensor& counts_L) {
  // Expert e (of those held here) computes down_e(silu(gate_e x) * up_e x) on its rows.
  if (UseFused(fused_, x_AD)) {
    return RunGroupedExperts(
        x_AD, torch::cat({torch::zeros({1}, torch::kLong), counts_L.to(torch::kLong).cumsum(0)}).to(x_AD.device()));
  }
  const int64_t* counts = counts_L.data_ptr<int64_t>();
  std::vector<torch::Tensor> outs;
  int64_t offset = 0;
  for (int64_t e = 0; e < counts_L.numel(); ++e) {
    const int64_t rows = counts[e];
    if (rows == 0) continue;
    const torch::Tensor xe = x_AD.narrow(0, offset, rows);
    const torch::Tensor hidden = torch::silu(torch::matmul(xe, experts->gate_proj[e].t())) *
                                 torch::matmul(xe, experts->up_proj[e].t());
    outs.push_back(torch::matmul(hidden, experts->down_proj[e].t()));
    offset += rows;
  }
  return outs.empty() ? torch::zeros_like(x_AD) : torch::cat(outs);
}

torch::Tensor MoEImpl::RunGroupedExperts(const torch::Tensor& x_AD, const torch::Tensor& offsets_E1) {
  const torch::Tensor hidden = kernels::SwiGlu(kernels::GroupedLinear(x_AD, experts->gate_proj, offsets_E1),
                                               kernels::GroupedLinear(x_AD, experts->up_proj, offsets_E1));
  return kernels::GroupedLinear(hidden, experts->down_proj, offsets_E1);
}

torch::Tensor MoEImpl::RunParallelExperts(const torch::Tensor& x_AD, const torch::Tensor& counts_E) {
  // Rows are sorted by global expert; rank r holds experts [r * L, (r + 1) * L).
  const int64_t size = exchange_->size(), L = moe_.num_experts / size;
  const torch::Tensor sent_counts = counts_E.to(torch::kCPU).to(torch::kLong).contiguous();
  const torch::Tensor recv_counts = exchange_->ExchangeCounts(sent_counts).view({size, L});  // [source, local expert]
  const torch::Tensor send_rows = sent_counts.view({size, L}).sum(1), recv_rows = recv_counts.sum(1);
  const std::vector<int64_t> send(send_rows.data_ptr<int64_t>(), send_rows.data_ptr<int64_t>() + size),
      recv(recv_rows.data_ptr<int64_t>(), recv_rows.data_ptr<int64_t>() + size);
  const torch::Tensor x_recv = ExchangeFunction::apply(x_AD.contiguous(), exchange_.get(), send, recv);
  // Received rows are grouped by source, then by expert: a stable sort by local expert
  // regroups them by expert for the GEMMs.
  const torch::Tensor expert_of_row =
      torch::arange(L, torch::kLong).repeat({size}).repeat_interleave(recv_counts.reshape({-1}));
  const torch::Tensor perm = std::get<1>(torch::sort(expert_of_row, c10::optional<bool>(true), 0, false)).to(x_AD.device());
  const torch::Tensor out_by_expert = RunExperts(x_recv.index_select(0, perm), recv_counts.sum(0));
  const torch::Tensor out_recv = torch::zeros_like(x_recv).index_copy(0, perm, out_by_expert);
  return ExchangeFunction::apply(out_recv, exchange_.get(), recv, send);
}

MoeStats MoEImpl::TakeStats() {
  MoeStats out = stats_;
  out.tokens_per_expert_E = stats_.tokens_per_expert_E.to(torch::kCPU);
  out.dropped = out.assignments - out.tokens_per_expert_E.sum().item<int64_t>();
  stats_.tokens_per_expert_E = torch::zeros({moe_.num_experts}, torch::kLong);
  stats_.assignments = 0;
  stats_.dropped = 0;
  return out;
}

void MoEImpl::UpdateBias(const torch::Tensor& load_E) {
  if (!moe_.use_aux_loss_free) return;
  DSV3_CHECK(load_E.numel() == moe_.num_experts) << load_E.numel() << " loads for " << moe_.num_experts << " experts";
  torch::NoGradGuard no_grad;
  const torch::Tensor load = load_E.to(torch::kFloat);
  const torch::Tensor step = moe_.bias_update_speed * torch::sign(load.mean() - load);
  gate->e_score_correction_bias.add_(step.to(gate->e_score_correction_bias.device())
                                         .to(gate->e_score_correction_bias.scalar_type()));
}

}  // namespace dsv3::model
