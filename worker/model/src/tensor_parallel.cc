// Tensor parallelism's autograd pieces (Megatron-LM's mappings.py and
// cross_entropy.py): f, g, the vocabulary-parallel embedding and cross entropy.
#include <cstdint>
#include <algorithm>
#include <limits>
#include <vector>

#include "dsv3/common/check.h"
#include "dsv3/model/layers.h"

namespace dsv3::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The group travels in the autograd context as an integer: the context holds IValues, and
// the group outlives every graph built while the model is sharded.
int64_t Pack(TensorParallelGroup* tp) { return static_cast<int64_t>(reinterpret_cast<intptr_t>(tp)); }
TensorParallelGroup* Unpack(int64_t packed) {
  return reinterpret_cast<TensorParallelGroup*>(static_cast<intptr_t>(packed));
}
TensorParallelGroup* Unpack(AutogradContext* ctx) { return Unpack(ctx->saved_data["tp"].toInt()); }

torch::Tensor SumOverGroup(const torch::Tensor& t, TensorParallelGroup* tp) {
  torch::Tensor out = t.contiguous().clone();
  tp->AllReduce(out);
  return out;
}

struct Enter : public torch::autograd::Function<Enter> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t tp) {
    ctx->saved_data["tp"] = tp;
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {SumOverGroup(grad[0], Unpack(ctx)), torch::Tensor()};
  }
};

struct Leave : public torch::autograd::Function<Leave> {
  static torch::Tensor forward(AutogradContext* /*ctx*/, const torch::Tensor& x, int64_t tp) {
    return SumOverGroup(x, Unpack(tp));
  }
  static variable_list backward(AutogradContext* /*ctx*/, variable_list grad) { return {grad[0], torch::Tensor()}; }
};

// loss = mean over valid targets of log(sum_v exp(l_v)) - l_target, with the vocabulary
// split over the group; the gradient (softmax - onehot) / valid comes out of the forward.
struct VocabCrossEntropy : public torch::autograd::Function<VocabCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits_XV, const torch::Tensor& targets_X,
                               int64_t ignore_index, int64_t tp_packed) {
    auto* tp = Unpack(tp_packed);
    const auto precision = logits_XV.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    const torch::Tensor l = logits_XV.to(precision);
    const int64_t V = l.size(1), first = tp->rank() * V;
    torch::Tensor max_X = std::get<0>(l.max(1));
    tp->AllReduce(max_X, /*max=*/true);
    const torch::Tensor exp_XV = (l - max_X.unsqueeze(1)).exp();
    torch::Tensor sum_X = exp_XV.sum(1);
    const torch::Tensor valid_X = targets_X != ignore_index;
    const torch::Tensor mine_X = valid_X & (targets_X >= first) & (targets_X < first + V);
    const torch::Tensor local_X = (targets_X - first).masked_fill(mine_X.logical_not(), 0);
    torch::Tensor target_X = l.gather(1, local_X.unsqueeze(1)).squeeze(1).masked_fill(mine_X.logical_not(), 0);
    // One all-reduce for both sums.
    torch::Tensor both = torch::stack({sum_X, target_X});
    tp->AllReduce(both);
    sum_X = both[0];
    target_X = both[1];
    const torch::Tensor count = valid_X.sum().to(precision);
    const torch::Tensor loss = ((sum_X.log() + max_X - target_X) * valid_X.to(precision)).sum() / count;
    ctx->save_for_backward({exp_XV / sum_X.unsqueeze(1), local_X, mine_X, valid_X, count});
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits_XV.scalar_type());
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const variable_list s = ctx->get_saved_variables();
    torch::Tensor g_XV = s[0].clone();
    g_XV.scatter_add_(1, s[1].unsqueeze(1), -s[2].to(g_XV.scalar_type()).unsqueeze(1));
    g_XV.mul_((s[3].to(g_XV.scalar_type()) / s[4]).unsqueeze(1) * grad[0].to(g_XV.scalar_type()));
    const auto dtype = static_cast<c10::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {g_XV.to(dtype), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// The chunked vocabulary-parallel loss: scored chunk by chunk in the forward, which also
// computes both gradients (for the mean over valid targets); backward scales them.
struct VocabLinearCrossEntropy : public torch::autograd::Function<VocabLinearCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& h_XD, const torch::Tensor& w_VD,
                               const torch::Tensor& targets_X, int64_t ignore_index, int64_t tp_packed,
                               int64_t chunk) {
    auto* tp = Unpack(tp_packed);
    const auto precision = h_XD.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    const torch::Tensor w = w_VD.to(precision);
    const int64_t X = h_XD.size(0), V = w.size(0), first = tp->rank() * V;
    torch::Tensor grad_h = torch::zeros({X, h_XD.size(1)}, h_XD.options().dtype(precision));
    torch::Tensor grad_w = torch::zeros_like(w);
    const torch::Tensor valid_X = targets_X != ignore_index;
    const torch::Tensor count = valid_X.sum().to(precision);
    torch::Tensor total = torch::zeros({}, w.options());
    for (int64_t at = 0; at < X; at += chunk) {
      const int64_t n = std::min(chunk, X - at);
      const torch::Tensor h = h_XD.narrow(0, at, n).to(precision), t = targets_X.narrow(0, at, n);
      const torch::Tensor valid = valid_X.narrow(0, at, n);
      const torch::Tensor l = torch::matmul(h, w.t());
      torch::Tensor max_n = std::get<0>(l.max(1));
      tp->AllReduce(max_n, /*max=*/true);
      torch::Tensor probs = (l - max_n.unsqueeze(1)).exp();
      const torch::Tensor mine = valid & (t >= first) & (t < first + V);
      const torch::Tensor local = (t - first).masked_fill(mine.logical_not(), 0);
      torch::Tensor both = torch::stack(
          {probs.sum(1), l.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(mine.logical_not(), 0)});
      tp->AllReduce(both);
      total = total + ((both[0].log() + max_n - both[1]) * valid.to(precision)).sum();
      // d(loss)/d(logits) = (softmax - onehot) for each valid target, before the mean.
      probs.div_(both[0].unsqueeze(1));
      probs.scatter_add_(1, local.unsqueeze(1), -mine.to(precision).unsqueeze(1));
      probs.mul_(valid.to(precision).unsqueeze(1));
      grad_h.narrow(0, at, n).copy_(torch::matmul(probs, w));
      grad_w.add_(torch::matmul(probs.t(), h));
    }
    ctx->save_for_backward({(grad_h / count).to(h_XD.scalar_type()), (grad_w / count).to(w_VD.scalar_type())});
    return total / count;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const variable_list s = ctx->get_saved_variables();
    const torch::Tensor g = grad[0];
    return {s[0] * g.to(s[0].scalar_type()), s[1] * g.to(s[1].scalar_type()), torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

// [B, T/tp, ...] from every rank -> [B, T, ...] in rank order along dim 1.
torch::Tensor AllGatherDim1(const torch::Tensor& x, TensorParallelGroup* tp) {
  const torch::Tensor blocks = tp->AllGather(x.contiguous());  // tp x B x T/tp x ...
  std::vector<int64_t> shape = x.sizes().vec();
  shape[1] *= tp->size();
  return blocks.transpose(0, 1).reshape(shape);
}

torch::Tensor SliceDim1(const torch::Tensor& x, TensorParallelGroup* tp) {
  DSV3_CHECK(x.size(1) % tp->size() == 0) << "a sequence of " << x.size(1) << " positions does not split over "
                                          << tp->size() << " tensor-parallel ranks";
  const int64_t n = x.size(1) / tp->size();
  return x.narrow(1, tp->rank() * n, n).contiguous();
}

struct GatherSeq : public torch::autograd::Function<GatherSeq> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t tp) {
    ctx->saved_data["tp"] = tp;
    return AllGatherDim1(x, Unpack(tp));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {SliceDim1(grad[0], Unpack(ctx)), torch::Tensor()};
  }
};

struct ScatterSeq : public torch::autograd::Function<ScatterSeq> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t tp) {
    ctx->saved_data["tp"] = tp;
    return SliceDim1(x, Unpack(tp));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {AllGatherDim1(grad[0], Unpack(ctx)), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor GatherSequence(const torch::Tensor& x_BtD, TensorParallelGroup* tp) {
  return tp == nullptr || tp->size() == 1 ? x_BtD : GatherSeq::apply(x_BtD, Pack(tp));
}

torch::Tensor ScatterSequence(const torch::Tensor& x_BTD, TensorParallelGroup* tp) {
  return tp == nullptr || tp->size() == 1 ? x_BTD : ScatterSeq::apply(x_BTD, Pack(tp));
}

torch::Tensor EnterParallel(const torch::Tensor& x, TensorParallelGroup* tp) {
  return tp == nullptr || tp->size() == 1 ? x : Enter::apply(x, Pack(tp));
}

torch::Tensor LeaveParallel(const torch::Tensor& x, TensorParallelGroup* tp) {
  return tp == nullptr || tp->size() == 1 ? x : Leave::apply(x, Pack(tp));
}

torch::Tensor TensorParallelBlock(const torch::Tensor& t, int64_t dim, const TensorParallelGroup& tp) {
  DSV3_CHECK(t.size(dim) % tp.size() == 0) << "dim " << dim << " of " << t.sizes() << " does not split over "
                                           << tp.size() << " tensor-parallel ranks";
  const int64_t block = t.size(dim) / tp.size();
  return t.narrow(dim, tp.rank() * block, block).clone();
}

torch::Tensor VocabParallelEmbedding(const torch::Tensor& ids, const torch::Tensor& weight_local,
                                     TensorParallelGroup* tp) {
  if (tp == nullptr || tp->size() == 1) return torch::embedding(weight_local, ids);
  const int64_t rows = weight_local.size(0), first = tp->rank() * rows;
  const torch::Tensor outside = (ids < first) | (ids >= first + rows);
  const torch::Tensor local = (ids - first).masked_fill(outside, 0);
  return LeaveParallel(torch::embedding(weight_local, local).masked_fill(outside.unsqueeze(-1), 0), tp);
}

torch::Tensor VocabParallelCrossEntropy(const torch::Tensor& logits_local_XV, const torch::Tensor& targets_X,
                                        int64_t ignore_index, TensorParallelGroup* tp) {
  DSV3_CHECK(tp != nullptr && logits_local_XV.dim() == 2 && targets_X.dim() == 1 &&
             logits_local_XV.size(0) == targets_X.size(0))
      << "vocab-parallel cross entropy of " << logits_local_XV.sizes() << " logits for " << targets_X.sizes()
      << " targets";
  return VocabCrossEntropy::apply(logits_local_XV, targets_X, ignore_index, Pack(tp));
}

torch::Tensor VocabParallelLinearCrossEntropy(const torch::Tensor& h_XD, const torch::Tensor& weight_local_VD,
                                              const torch::Tensor& targets_X, int64_t ignore_index,
                                              TensorParallelGroup* tp, int64_t chunk) {
  DSV3_CHECK(tp != nullptr && h_XD.dim() == 2 && weight_local_VD.dim() == 2 && targets_X.dim() == 1 &&
             h_XD.size(0) == targets_X.size(0) && h_XD.size(1) == weight_local_VD.size(1) && chunk > 0)
      << "vocab-parallel linear cross entropy of " << h_XD.sizes() << " hidden states, a " << weight_local_VD.sizes()
      << " head and " << targets_X.sizes() << " targets";
  return VocabLinearCrossEntropy::apply(h_XD, weight_local_VD, targets_X, ignore_index, Pack(tp), chunk);
}

}  // namespace dsv3::model
