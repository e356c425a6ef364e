// Where the time of a training step goes, per op family, with dsv3_kernels and with the plain
// LibTorch path they replace, in one run on the same inputs; and the peak memory of the loss
// (linear + cross-entropy, forward + backward) both ways. Prints figures; asserts nothing.
//
//   kernels_bench [--config configs/train_config_tiny.json] [--batch 8] [--seq 1024]
//                 [--loss-seq 2048] [--threads 2] [--reps 3]
//
// Shapes come from the config's model (d_model, heads, head dims, FFN widths, experts, vocab).
// Times are the best of --reps runs; backward is timed on its own (the forward is re-run
// untimed before it).
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <string>

#include <torch/torch.h>

#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"
#include "dsv3/common/threads.h"
#include "dsv3/dist/optimizer_update.h"
#include "dsv3/kernels/fused_optimizer.h"
#include "dsv3/kernels/kernels.h"
#include "dsv3/model/layers.h"
#include "kernels/reference_ops.h"

namespace {

using Clock = std::chrono::steady_clock;
using Inputs = std::vector<torch::Tensor>;
using Op = std::function<torch::Tensor(const Inputs&)>;

double Ms(Clock::time_point a) { return std::chrono::duration<double, std::milli>(Clock::now() - a).count(); }

struct Timing {
  double forward = std::numeric_limits<double>::infinity(), backward = std::numeric_limits<double>::infinity();
};

Timing Time(const Op& op, const Inputs& inputs, int reps) {
  Timing t;
  for (int r = 0; r < reps; ++r) {
    for (const auto& x : inputs) {
      if (x.requires_grad()) x.mutable_grad() = torch::Tensor();
    }
    auto start = Clock::now();
    torch::Tensor out = op(inputs);
    t.forward = std::min(t.forward, Ms(start));
    const torch::Tensor seed = out.dim() == 0 ? torch::ones_like(out) : torch::full_like(out, 1e-3);
    start = Clock::now();
    out.backward(seed);
    t.backward = std::min(t.backward, Ms(start));
  }
  return t;
}

void Row(const char* family, const Timing& ref, const Timing& fused) {
  std::printf("| %-28s | %9.1f | %9.1f | %9.1f | %9.1f | %5.2fx |\n", family, ref.forward, ref.backward, fused.forward,
              fused.backward, (ref.forward + ref.backward) / (fused.forward + fused.backward));
}

torch::Tensor Param(at::IntArrayRef shape, double scale = 0.02) {
  return (torch::randn(shape) * scale).requires_grad_(true);
}

// The model's unfused MoE dispatch, per-expert loop and combine.
torch::Tensor ReferenceExperts(const torch::Tensor& x, const torch::Tensor& expert_XK, const torch::Tensor& gate_XK,
                               const torch::Tensor& wg, const torch::Tensor& wu, const torch::Tensor& wd) {
  const int64_t X = x.size(0), k = expert_XK.size(1), E = wg.size(0);
  const torch::Tensor token_A = torch::arange(X, torch::kLong).repeat_interleave(k);
  const torch::Tensor order = std::get<1>(torch::sort(expert_XK.flatten(), c10::optional<bool>(true), 0, false));
  const torch::Tensor token = token_A.index_select(0, order);
  const torch::Tensor gate = gate_XK.flatten().index_select(0, order);
  const torch::Tensor counts = torch::bincount(expert_XK.flatten(), {}, E);
  const torch::Tensor xa = x.index_select(0, token);
  std::vector<torch::Tensor> outs;
  int64_t offset = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = counts[e].item<int64_t>();
    const torch::Tensor xe = xa.narrow(0, offset, n);
    outs.push_back(torch::matmul(torch::silu(torch::matmul(xe, wg[e].t())) * torch::matmul(xe, wu[e].t()), wd[e].t()));
    offset += n;
  }
  return torch::zeros_like(x).index_add(0, token, torch::cat(outs) * gate.unsqueeze(1));
}

torch::Tensor FusedExperts(const torch::Tensor& x, const torch::Tensor& expert_XK, const torch::Tensor& gate_XK,
                           const torch::Tensor& wg, const torch::Tensor& wu, const torch::Tensor& wd) {
  namespace k = dsv3::kernels;
  const k::DispatchPlan plan = k::PlanDispatch(expert_XK, torch::ones_like(expert_XK, torch::kBool), wg.size(0));
  const torch::Tensor xa = k::Dispatch(x, plan);
  const torch::Tensor h = k::SwiGlu(k::GroupedLinear(xa, wg, plan.offsets_E1), k::GroupedLinear(xa, wu, plan.offsets_E1));
  return k::Combine(k::GroupedLinear(h, wd, plan.offsets_E1), gate_XK, plan);
}

torch::Tensor ReferenceLoss(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(torch::matmul(h, w.t()), targets);
}

// Resident memory (MiB) the loss adds over its inputs at its peak, forward + backward. Each
// variant runs in a fresh process (this binary with --loss-peak; fork would inherit OpenMP's
// threads), so neither sees the other's freed pages.
double ChildLossPeak(int64_t X, int64_t D, int64_t V, bool fused) {
  torch::manual_seed(0);
  const torch::Tensor h = Param({X, D}, 1.0), w = Param({V, D});
  const torch::Tensor targets = torch::randint(0, V, {X}, torch::kLong);
  long pages = 0, resident = 0;
  std::ifstream("/proc/self/statm") >> pages >> resident;
  const double base_mib = static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
  torch::Tensor loss = fused ? dsv3::kernels::LinearCrossEntropy(h, w, targets) : ReferenceLoss(h, w, targets);
  loss.backward();
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0 - base_mib;
}

double LossPeakMiB(int64_t X, int64_t D, int64_t V, bool fused) {
  const std::string cmd = "/proc/" + std::to_string(getpid()) + "/exe --loss-peak " + (fused ? "1 " : "0 ") +
                          std::to_string(X) + " " + std::to_string(D) + " " + std::to_string(V);
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  double extra = -1;
  if (std::fscanf(pipe, "%lf", &extra) != 1) extra = -1;
  pclose(pipe);
  return extra;
}

}  // namespace

int main(int argc, char** argv) {
  dsv3::PreferFastOpenBlasKernels(argv);
  dsv3::LimitOpenBlasThreads(1);  // as every rank does
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc == 6 && std::string(argv[1]) == "--loss-peak") {
    std::printf("%f\n", ChildLossPeak(std::stoll(argv[3]), std::stoll(argv[4]), std::stoll(argv[5]),
                                        std::string(argv[2]) == "1"));
    return 0;
  }
  std::string config_path = "configs/train_config_tiny.json";
  int64_t batch = 8, seq = 1024, loss_seq = 2048;
  int threads = 2, reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--config") config_path = v;
    else if (k == "--batch") batch = std::stoll(v);
    else if (k == "--seq") seq = std::stoll(v);
    else if (k == "--loss-seq") loss_seq = std::stoll(v);
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--reps") reps = std::stoi(v);
    else {
      std::cerr << "unknown argument " << k << "\n";
      return 2;
    }
  }
  const dsv3::config::LoadResult r = dsv3::config::LoadConfigFile(config_path);
  if (!r.ok()) {
    std::cerr << r.errors[0].ToString() << "\n";
    return 1;
  }
  dsv3::config::ModelConfig m = r.config.model;
  dsv3::config::ResolveModelDefaults(m);
  torch::set_num_threads(threads);
  torch::manual_seed(0);
  const int64_t B = batch, T = seq, X = B * T, D = m.mla.d_model, H = m.mla.num_heads;
  const int64_t N = m.mla.qk_nope_head_dim, R = m.mla.qk_rope_head_dim, Vd = m.mla.v_head_dim;
  const int64_t E = m.moe.num_experts, k = m.moe.num_experts_per_token, F = m.moe.expert_intermediate_size;
  const int64_t Fd = m.dense_intermediate_size, V = m.vocab_size;
  std::printf("kernels_bench %s: batch %lld x seq %lld, fp32, %d threads, OpenBLAS %s (one thread per rank)\n",
              config_path.c_str(), static_cast<long long>(B), static_cast<long long>(T), torch::get_num_threads(),
              std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "auto");
  std::printf("| %-28s | %9s | %9s | %9s | %9s | %6s |\n", "op family (one call)", "ref fwd", "ref bwd", "fused fwd",
              "fused bwd", "speedup");
  std::printf("|---|---|---|---|---|---|\n");
  namespace kn = dsv3::kernels;

  {
    const Inputs in{Param({X, D}, 1.0), Param({D}, 1.0)};
    Row("RMSNorm", Time([&](const Inputs& i) { return dsv3::model::Norm(D, 1e-6)->forward(i[0]); }, {in[0]}, reps),
        Time([](const Inputs& i) { return kn::RmsNorm(i[0], i[1], 1e-6); }, in, reps));
  }
  {
    const Inputs in{Param({B, T, H, R}, 1.0)};
    const torch::Tensor pos = torch::arange(T, torch::kLong);
    Row("RoPE (queries)", Time([&](const Inputs& i) { return dsv3::model::ApplyRope(i[0], pos, 1e4); }, in, reps),
        Time([&](const Inputs& i) { return kn::Rope(i[0], pos, 1e4); }, in, reps));
  }
  {
    const Inputs in{Param({X, Fd}, 1.0), Param({X, Fd}, 1.0)};
    Row("SwiGLU (dense width)", Time([](const Inputs& i) { return torch::silu(i[0]) * i[1]; }, in, reps),
        Time([](const Inputs& i) { return kn::SwiGlu(i[0], i[1]); }, in, reps));
  }
  {
    const Inputs in{Param({X, D}, 1.0), Param({H * (N + R), D})};
    Row("Linear (q_proj)", Time([](const Inputs& i) { return torch::matmul(i[0], i[1].t()); }, in, reps),
        Time([](const Inputs& i) { return kn::Linear(i[0], i[1]); }, in, reps));
  }
  {
    const Inputs in{Param({B, T, H, N + R}, 1.0), Param({B, T, H, N + R}, 1.0), Param({B, T, H, Vd}, 1.0)};
    const double scale = 1.0 / std::sqrt(static_cast<double>(N + R));
    Row("Attention (causal)",
        Time([&](const Inputs& i) { return dsv3::kernels::ReferenceAttention(i[0], i[1], i[2], scale, {}); }, in, reps),
        Time([&](const Inputs& i) { return kn::Attention(i[0], i[1], i[2], scale); }, in, reps));
  }
  {
    const torch::Tensor expert = std::get<1>(torch::rand({X, E}).topk(k, -1));
    const torch::Tensor gate = torch::rand({X, k});
    const Inputs in{Param({X, D}, 1.0), Param({E, F, D}), Param({E, F, D}), Param({E, D, F})};
    Row("MoE dispatch+experts+combine",
        Time([&](const Inputs& i) { return ReferenceExperts(i[0], expert, gate, i[1], i[2], i[3]); }, in, reps),
        Time([&](const Inputs& i) { return FusedExperts(i[0], expert, gate, i[1], i[2], i[3]); }, in, reps));
  }
  {
    const Inputs in{Param({X, D}, 1.0), Param({V, D})};
    const torch::Tensor targets = torch::randint(0, V, {X}, torch::kLong);
    Row("Head + cross-entropy",
        Time([&](const Inputs& i) { return ReferenceLoss(i[0], i[1], targets); }, in, reps),
        Time([&](const Inputs& i) { return kn::LinearCrossEntropy(i[0], i[1], targets); }, in, reps));
  }
  {
    const int64_t n = dsv3::config::CountParameters(m, r.config.training.use_mtp,
                                                    r.config.training.num_predict_tokens).total;
    torch::Tensor p = torch::randn({n}), g = torch::randn({n}), mask = torch::ones({n});
    torch::Tensor m1 = torch::zeros({n}), v1 = torch::zeros({n});
    dsv3::dist::OptimizerOptions o;
    o.weight_decay = 0.1;
    double ref = 1e30, fused = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
      auto start = Clock::now();
      // The old step: clipping as its own pass, then the op-by-op update.
      dsv3::dist::ReferenceUpdate(o, 1e-3, rep + 1, p, g * 0.5, mask, m1, v1);
      ref = std::min(ref, Ms(start));
      start = Clock::now();
      kn::UpdateHyper hp;
      hp.weight_decay = 0.1;
      hp.step = rep + 1;
      hp.grad_scale = 0.5;
      kn::FusedUpdate(hp, p, g, mask, m1, v1);
      fused = std::min(fused, Ms(start));
    }
    std::printf("| %-28s | %9.1f | %9s | %9.1f | %9s | %5.2fx |\n",
                ("AdamW update, " + std::to_string(n / 1000000) + "M params").c_str(), ref, "-", fused, "-",
                ref / fused);
  }
  const int64_t LX = B * loss_seq;
  const double ref_mib = LossPeakMiB(LX, D, V, false), fused_mib = LossPeakMiB(LX, D, V, true);
  std::printf("\nloss peak memory, %lld tokens (batch %lld x seq %lld) x vocab %lld, forward + backward: reference "
              "%.0f MiB, fused %.0f MiB (%.1f%% of the reference)\n",
              static_cast<long long>(LX), static_cast<long long>(B), static_cast<long long>(loss_seq),
              static_cast<long long>(V), ref_mib, fused_mib, 100.0 * fused_mib / ref_mib);
  return 0;
}
