// dsv3_kernels against the plain LibTorch path they replace: values and gradients, fp32 within
// 1e-5 relative, bf16 within its precision, odd sizes and empty inputs. Every case runs on the
// CPU here and on CUDA (the `gpu`-labelled entry) where the build has CUDA kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "dsv3/dist/optimizer_update.h"
#include "dsv3/kernels/fused_optimizer.h"
#include "dsv3/kernels/kernels.h"
#include "dsv3/model/layers.h"
#include "kernels/reference_ops.h"

namespace dsv3::kernels {
namespace {

struct Case {
  std::string name;
  torch::DeviceType device;
  torch::ScalarType dtype;
};

// Tolerances: fp32 1e-5 relative (plus a small absolute floor for values near 0); bf16 has
// 8 mantissa bits, and a kernel that rounds once where the reference rounds twice differs by
// up to a few ulps.
struct Tol {
  double rtol, atol;
};
Tol TolFor(torch::ScalarType t) {
  if (t == torch::kBFloat16) return {3e-2, 3e-2};
  if (t == torch::kDouble) return {1e-10, 1e-12};
  return {1e-5, 1e-6};
}

void ExpectClose(const torch::Tensor& got, const torch::Tensor& want, Tol tol, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what << ": undefined";
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  if (got.numel() == 0) return;
  const torch::Tensor g = got.to(torch::kCPU).to(torch::kDouble), w = want.to(torch::kCPU).to(torch::kDouble);
  const torch::Tensor bound = tol.atol + tol.rtol * w.abs();
  const torch::Tensor excess = (g - w).abs() - bound;
  const double worst = excess.max().item<double>();
  EXPECT_LE(worst, 0.0) << what << ": max |got - want| = " << (g - w).abs().max().item<double>()
                        << " beyond rtol " << tol.rtol << " / atol " << tol.atol;
}

class KernelTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (GetParam().device == torch::kCUDA && !(torch::cuda::is_available() && Available(torch::Device(torch::kCUDA)))) {
      GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build";
    }
    torch::manual_seed(7);
  }
  torch::TensorOptions opts() const { return torch::TensorOptions().dtype(GetParam().dtype).device(GetParam().device); }
  torch::Tensor Rand(at::IntArrayRef shape, double scale = 1.0) const {
    return (torch::randn(shape, torch::kDouble) * scale).to(opts()).requires_grad_(true);
  }
  Tol tol() const { return TolFor(GetParam().dtype); }
  // Gradients of sum(out * probe) w.r.t. inputs, probe a fixed random tensor.
  static std::vector<torch::Tensor> Grads(const torch::Tensor& out, const torch::Tensor& probe,
                                          const std::vector<torch::Tensor>& inputs) {
    return torch::autograd::grad({(out.to(torch::kDouble) * probe).sum()}, inputs, {}, false, false, true);
  }
};

TEST_P(KernelTest, LinearMatchesMatmul) {
  for (const int64_t X : {37, 0}) {
    const torch::Tensor x = Rand({X, 29}), w = Rand({53, 29}, 0.2);
    const torch::Tensor got = Linear(x, w), want = torch::matmul(x, w.t());
    ExpectClose(got, want, tol(), "linear");
    const torch::Tensor probe = torch::randn({X, 53}, torch::kDouble).to(got.device());
    const auto g = Grads(got, probe, {x, w}), r = Grads(want, probe, {x, w});
    ExpectClose(g[0], r[0], tol(), "linear dx");
    ExpectClose(g[1], r[1], tol(), "linear dw");
  }
}

TEST_P(KernelTest, RmsNormMatchesReference) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{3, 7, 33}, {0, 33}, {5, 1}}) {
    const torch::Tensor x = Rand(shape, 2.0), w = Rand({shape.back()});
    const torch::Tensor got = RmsNorm(x, w, 1e-6);
    const auto up = x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    const torch::Tensor xf = x.to(up);
    const torch::Tensor want = w * (xf * torch::rsqrt(xf.pow(2).mean(-1, true) + 1e-6)).to(x.scalar_type());
    ExpectClose(got, want, tol(), "rmsnorm");
    const torch::Tensor probe = torch::randn(shape, torch::kDouble).to(got.device());
    const auto g = Grads(got, probe, {x, w}), r = Grads(want, probe, {x, w});
    ExpectClose(g[0], r[0], tol(), "rmsnorm dx");
    ExpectClose(g[1], r[1], tol(), "rmsnorm dw");
  }
}

TEST_P(KernelTest, RopeMatchesModelPathWithDocumentPositions) {
  const int64_t B = 2, T = 13, H = 3, R = 10;
  const torch::Tensor shared = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(GetParam().device));
  // Positions that restart at a document boundary (reset_attention_mask).
  const torch::Tensor per_row =
      torch::tensor({0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, torch::kLong)
          .view({B, T})
          .to(GetParam().device);
  for (const torch::Tensor& positions : {shared, per_row}) {
    const torch::Tensor x = Rand({B, T, H, R});
    const torch::Tensor got = Rope(x, positions, 10000.0), want = model::ApplyRope(x, positions, 10000.0);
    ExpectClose(got, want, tol(), "rope");
    const torch::Tensor probe = torch::randn({B, T, H, R}, torch::kDouble).to(got.device());
    ExpectClose(Grads(got, probe, {x})[0], Grads(want, probe, {x})[0], tol(), "rope dx");
  }
  const torch::Tensor empty = Rand({0, T, H, R});
  EXPECT_EQ(Rope(empty, shared, 10000.0).numel(), 0);
}

TEST_P(KernelTest, SwiGluMatchesSiluTimesUp) {
  for (const int64_t n : {1001, 0}) {
    const torch::Tensor g = Rand({n, 3}, 3.0), u = Rand({n, 3});
    const torch::Tensor got = SwiGlu(g, u), want = torch::silu(g) * u;
    ExpectClose(got, want, tol(), "swiglu");
    const torch::Tensor probe = torch::randn({n, 3}, torch::kDouble).to(got.device());
    const auto a = Grads(got, probe, {g, u}), b = Grads(want, probe, {g, u});
    ExpectClose(a[0], b[0], tol(), "swiglu dgate");
    ExpectClose(a[1], b[1], tol(), "swiglu dup");
  }
}

// The unfused MoE path of the model: stable sort by expert, index_select, index_add.
torch::Tensor ReferenceMoe(const torch::Tensor& x_XD, const torch::Tensor& expert_XK, const torch::Tensor& gate_XK,
                           const torch::Tensor& keep_XK, const torch::Tensor& w_EOD, int64_t E) {
  const int64_t X = x_XD.size(0), k = expert_XK.size(1);
  const torch::Tensor token_A = torch::arange(X, expert_XK.options()).repeat_interleave(k);
  const torch::Tensor kept = keep_XK.flatten().nonzero().squeeze(1);
  torch::Tensor expert_A = expert_XK.flatten().index_select(0, kept);
  const torch::Tensor order = std::get<1>(torch::sort(expert_A, c10::optional<bool>(true), 0, false));
  expert_A = expert_A.index_select(0, order);
  const torch::Tensor token = token_A.index_select(0, kept).index_select(0, order);
  const torch::Tensor gate = gate_XK.flatten().index_select(0, kept).index_select(0, order).to(x_XD.scalar_type());
  const torch::Tensor counts = torch::bincount(expert_A.cpu(), {}, E);
  const torch::Tensor x_AD = x_XD.index_select(0, token);
  std::vector<torch::Tensor> outs;
  int64_t offset = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = counts[e].item<int64_t>();
    outs.push_back(torch::matmul(x_AD.narrow(0, offset, n), w_EOD[e].t()));
    offset += n;
  }
  const torch::Tensor out_AD = torch::cat(outs);
  return torch::zeros({X, w_EOD.size(1)}, x_XD.options()).index_add(0, token, out_AD * gate.unsqueeze(1));
}

TEST_P(KernelTest, MoeDispatchGroupedGemmCombineMatchReference) {
  const int64_t E = 5, k = 2, D = 11, O = 7;
  for (const int64_t X : {23, 0}) {
    const auto iopts = torch::TensorOptions().dtype(torch::kLong).device(GetParam().device);
    // Distinct experts per token; expert 3 gets nothing.
    torch::Tensor expert = torch::randint(0, E - 1, {X, 1}, iopts);
    expert = torch::cat({expert, (expert + 1) % (E - 1)}, 1);
    expert.masked_fill_(expert == 3, 4);
    expert.select(1, 1).masked_fill_(expert.select(1, 1) == expert.select(1, 0), 0);
    const torch::Tensor gate = Rand({X, k}).abs().detach().to(torch::kFloat).requires_grad_(true);
    const torch::Tensor x = Rand({X, D}), w = Rand({E, O, D}, 0.3);
    // Capacity 3: some experts overflow; lowest gates drop first.
    const torch::Tensor keep = CapacityKeep(expert, gate.detach(), E, 3);
    const torch::Tensor counts = torch::zeros({E}, torch::kLong).index_add_(
        0, expert.flatten().cpu(), keep.flatten().cpu().to(torch::kLong));
    EXPECT_LE(counts.max().item<int64_t>(), X == 0 ? 0 : 3);
    const DispatchPlan plan = PlanDispatch(expert, keep, E);
    ExpectClose(plan.counts_E.cpu(), counts, {0, 0}, "plan counts");
    const torch::Tensor got = Combine(GroupedLinear(Dispatch(x, plan), w, plan.offsets_E1), gate, plan);
    const torch::Tensor want = ReferenceMoe(x, expert, gate, keep, w, E);
    ExpectClose(got, want, tol(), "moe output");
    const torch::Tensor probe = torch::randn({X, O}, torch::kDouble).to(got.device());
    const auto a = Grads(got, probe, {x, w, gate}), b = Grads(want, probe, {x, w, gate});
    ExpectClose(a[0], b[0], tol(), "moe dx");
    ExpectClose(a[1], b[1], tol(), "moe dw");
    ExpectClose(a[2], b[2], TolFor(GetParam().dtype == torch::kBFloat16 ? torch::kBFloat16 : torch::kFloat),
                "moe dgate");
  }
}

TEST_P(KernelTest, CapacityKeepPrefersHigherGatesAndEarlierTies) {
  const auto iopts = torch::TensorOptions().dtype(torch::kLong).device(GetParam().device);
  const torch::Tensor expert = torch::tensor({0, 0, 0, 1, 0, 1}, iopts).view({3, 2});
  const torch::Tensor gate =
      torch::tensor({0.5, 0.9, 0.5, 0.1, 0.5, 0.2}, torch::TensorOptions().device(GetParam().device)).view({3, 2});
  const torch::Tensor keep = CapacityKeep(expert, gate, 2, 2).cpu().flatten();
  // Expert 0 holds slots 0 (0.5), 1 (0.9), 2 (0.5), 4 (0.5): keeps 0.9 and the first 0.5.
  const std::vector<bool> want = {true, true, false, true, false, true};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(keep[static_cast<int64_t>(i)].item<bool>(), want[i]) << i;
}

TEST_P(KernelTest, LinearCrossEntropyMatchesFullLogits) {
  const int64_t V = 41, D = 12;
  for (const int64_t X : {37, 5}) {
    const torch::Tensor h = Rand({X, D}), w = Rand({V, D}, 0.5);
    torch::Tensor targets = torch::randint(0, V, {X}, torch::TensorOptions().dtype(torch::kLong).device(GetParam().device));
    targets[1] = -100;  // ignored
    const torch::Tensor got = LinearCrossEntropy(h, w, targets, -100, /*chunk_tokens=*/8);
    const torch::Tensor want = torch::nn::functional::cross_entropy(
        torch::matmul(h, w.t()).to(h.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat), targets,
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    ExpectClose(got, want, tol(), "loss");
    const auto a = torch::autograd::grad({got * 1.7}, {h, w}), b = torch::autograd::grad({want * 1.7}, {h, w});
    ExpectClose(a[0], b[0], tol(), "loss dh");
    ExpectClose(a[1], b[1], tol(), "loss dw");
  }
  // No counted row: NaN, as torch's cross_entropy.
  const torch::Tensor h = Rand({3, D}), w = Rand({V, D});
  const torch::Tensor none = torch::full({3}, -100, torch::TensorOptions().dtype(torch::kLong).device(GetParam().device));
  EXPECT_TRUE(std::isnan(LinearCrossEntropy(h, w, none).item<double>()));
}

TEST_P(KernelTest, AttentionMatchesMaterialisedSoftmax) {
  const int64_t B = 2, H = 2, Q = 12, Vd = 8;
  // 300 tokens: three 128-row blocks on the CPU, so the online softmax crosses blocks.
  for (const int64_t T : {300, 9}) {
    const torch::Tensor segments =
        torch::div(torch::arange(T, torch::kLong), 97, "floor").view({1, T}).expand({B, T}).contiguous().to(GetParam().device);
    for (const AttentionMask& mask : {AttentionMask{}, AttentionMask{std::optional<int64_t>(50), {}},
                                      AttentionMask{std::nullopt, segments}}) {
      const torch::Tensor q = Rand({B, T, H, Q}), k = Rand({B, T, H, Q}), v = Rand({B, T, H, Vd});
      const double scale = 1.0 / std::sqrt(static_cast<double>(Q));
      const torch::Tensor got = Attention(q, k, v, scale, mask), want = ReferenceAttention(q, k, v, scale, mask);
      const std::string what = "attention T=" + std::to_string(T) + (mask.window ? " window" : "") +
                               (mask.segments_BT.defined() ? " documents" : "");
      ExpectClose(got, want, tol(), what);
      const torch::Tensor probe = torch::randn({B, T, H, Vd}, torch::kDouble).to(got.device());
      const auto a = Grads(got, probe, {q, k, v}), b = Grads(want, probe, {q, k, v});
      ExpectClose(a[0], b[0], tol(), what + " dq");
      ExpectClose(a[1], b[1], tol(), what + " dk");
      ExpectClose(a[2], b[2], tol(), what + " dv");
    }
  }
}

const Case kCases[] = {
    {"cpu_fp32", torch::kCPU, torch::kFloat},   {"cpu_fp64", torch::kCPU, torch::kDouble},
    {"cpu_bf16", torch::kCPU, torch::kBFloat16}, {"cuda_fp32", torch::kCUDA, torch::kFloat},
    {"cuda_bf16", torch::kCUDA, torch::kBFloat16},
};
INSTANTIATE_TEST_SUITE_P(Kernels, KernelTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// The fused optimizer update against the op-by-op update (torch::optim's arithmetic) over
// several steps, each optimizer type, with a decay mask, a clipping scale and a bf16 copy.
class FusedUpdateTest : public ::testing::TestWithParam<torch::DeviceType> {};

TEST_P(FusedUpdateTest, EqualsOpByOpUpdate) {
  if (GetParam() == torch::kCUDA && !(torch::cuda::is_available() && Available(torch::Device(torch::kCUDA)))) {
    GTEST_SKIP() << "no CUDA device or no CUDA kernels in this build";
  }
  torch::manual_seed(3);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(GetParam());
  for (const std::string type : {"adamw", "adam", "sgd"}) {
    for (const int64_t n : {100003, 0}) {
      torch::Tensor p_ref = torch::randn({n}, f32), p = p_ref.clone();
      torch::Tensor m_ref = torch::zeros({n}, f32), v_ref = torch::zeros({n}, f32), m = m_ref.clone(), v = v_ref.clone();
      const torch::Tensor mask = (torch::rand({n}, f32) > 0.3).to(torch::kFloat);
      torch::Tensor copy = torch::empty({n}, f32.dtype(torch::kBFloat16));
      dist::OptimizerOptions o;
      o.type = type;
      o.weight_decay = 0.1;
      for (int64_t step = 1; step <= 4; ++step) {
        const torch::Tensor g = torch::randn({n}, f32);
        const double clip = 0.5;
        UpdateHyper hp;
        hp.type = type;
        hp.lr = 1e-2;
        hp.beta1 = o.beta1;
        hp.beta2 = o.beta2;
        hp.eps = o.eps;
        hp.weight_decay = o.weight_decay;
        hp.step = step;
        hp.grad_scale = clip;
        FusedUpdate(hp, p, g, mask, m, v, copy);
        dist::ReferenceUpdate(o, 1e-2, step, p_ref, g * clip, mask, m_ref, v_ref);
      }
      ExpectClose(p, p_ref, {2e-6, 1e-7}, type + " params");
      if (type != "sgd") ExpectClose(v, v_ref, {2e-6, 1e-9}, type + " exp_avg_sq");
      ExpectClose(copy.to(torch::kFloat), p.to(torch::kBFloat16).to(torch::kFloat), {0, 0}, type + " bf16 copy");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, FusedUpdateTest, ::testing::Values(torch::kCPU, torch::kCUDA),
                         [](const ::testing::TestParamInfo<torch::DeviceType>& i) {
                           return std::string(i.param == torch::kCPU ? "cpu" : "cuda");
                         });

}  // namespace
}  // namespace dsv3::kernels
