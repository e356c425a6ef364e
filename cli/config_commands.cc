#include "config_commands.h"

#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/common/parallel_layout.h"
#include "dsv3/common/estimator.h"
#include "dsv3/common/hf_import.h"
#include "output.h"

namespace dsv3::cli {
namespace {

using config::Diagnostic;
using config::LoadResult;
using nlohmann::json;

json DiagnosticsJson(const std::vector<Diagnostic>& list) {
  json out = json::array();
  for (const auto& d : list) out.push_back({{"path", d.path}, {"message", d.message}});
  return out;
}

// Options shared by verbs that load a config.
struct LoadFlags {
  std::optional<int64_t> world_size;
  bool deepspeed = false;
  void Add(CLI::App& verb) {
    verb.add_option("--gpus,--world-size", world_size,
                    "Ranks the job runs with (derives data_parallel_size when it is -1)")
        ->check(CLI::PositiveNumber);
    verb.add_flag("--deepspeed", deepspeed, "Turn the deepspeed section on (deepspeed.enabled = true)");
  }
  config::LoadOptions Options() const {
    config::LoadOptions o;
    o.world_size = world_size;
    o.enable_deepspeed = deepspeed;
    return o;
  }
};

void PrintDiagnostics(std::ostream& os, const std::string& file, const char* kind,
                      const std::vector<Diagnostic>& list) {
  for (const auto& d : list) os << file << ": " << kind << d.ToString() << "\n";
}

// ------------------------------------------------------------------ validate
void AddValidate(CLI::App& parent, CliContext& ctx) {
  struct State {
    std::vector<std::string> files;
    LoadFlags flags;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = parent.add_subcommand("validate", "Check configs; print every problem with its JSON path");
  verb->add_option("FILE", st->files, "Config files")->required();
  st->flags.Add(*verb);
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    json report = json::array();
    bool all_ok = true;
    for (const auto& file : st->files) {
      const bool deepspeed = config::LooksLikeDeepSpeedConfig(file);
      const LoadResult r = deepspeed ? config::ValidateDeepSpeedFile(file)
                                     : config::LoadConfigFile(file, st->flags.Options());
      all_ok = all_ok && r.ok();
      if (st->format == OutputFormat::kJson) {
        report.push_back({{"file", file},
                          {"kind", deepspeed ? "deepspeed" : "dsv3"},
                          {"valid", r.ok()},
                          {"errors", DiagnosticsJson(r.errors)},
                          {"warnings", DiagnosticsJson(r.warnings)}});
        continue;
      }
      PrintDiagnostics(ctx.err, file, "warning: ", r.warnings);
      if (r.ok()) {
        ctx.out << file << (deepspeed ? ": valid (DeepSpeed config)\n" : ": valid\n");
      } else {
        PrintDiagnostics(ctx.out, file, "", r.errors);
        ctx.out << file << ": invalid (" << r.errors.size() << (r.errors.size() == 1 ? " error" : " errors")
                << ")\n";
      }
    }
    if (st->format == OutputFormat::kJson) ctx.out << report.dump(2) << "\n";
    ctx.exit_code = all_ok ? kExitOk : kExitFailed;
  });
}

// Loads one config for show/estimate; prints errors and sets the exit code on failure.
std::optional<LoadResult> LoadOrReport(const std::string& file, const LoadFlags& flags, OutputFormat format,
                                       CliContext& ctx) {
  LoadResult r = config::LoadConfigFile(file, flags.Options());
  if (r.ok()) return r;
  if (format == OutputFormat::kJson) {
    ctx.out << json{{"file", file}, {"valid", false}, {"errors", DiagnosticsJson(r.errors)}}.dump(2) << "\n";
  } else {
    PrintDiagnostics(ctx.err, file, "", r.errors);
  }
  ctx.exit_code = kExitFailed;
  return std::nullopt;
}

// ------------------------------------------------------------------ show
void AddShow(CLI::App& parent, CliContext& ctx) {
  struct State {
    std::string file;
    LoadFlags flags;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = parent.add_subcommand(
      "show", "Print the fully resolved config: inheritance merged, defaults and derived values filled in");
  verb->add_option("FILE", st->file, "Config file")->required();
  st->flags.Add(*verb);
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    auto r = LoadOrReport(st->file, st->flags, st->format, ctx);
    if (!r) return;
    const json derived = config::DerivedToJson(r->config);
    const std::vector<std::string> grid = config::DescribeGrid(r->config);
    if (st->format == OutputFormat::kJson) {
      ctx.out << json{{"config", config::ToJson(r->config)},
                      {"derived", derived},
                      {"grid", grid},
                      {"files", r->files},
                      {"warnings", DiagnosticsJson(r->warnings)}}
                     .dump(2)
              << "\n";
    } else {
      // The output is itself a valid config (comments are allowed), so it can be saved and
      // submitted as it is.
      ctx.out << "// " << st->file << " resolved";
      if (r->files.size() > 1) {
        ctx.out << " (extends:";
        for (size_t i = 0; i + 1 < r->files.size(); ++i) ctx.out << " " << r->files[i];
        ctx.out << ")";
      }
      ctx.out << "\n" << config::ToJsonText(r->config) << "\n// derived values:\n";
      for (const auto& [key, value] : derived.items()) ctx.out << "//   " << key << ": " << value.dump() << "\n";
      if (grid.size() > 1) {
        ctx.out << "// parallel grid (rank = (pp x dp_size + dp) x tp_size + tp; ep inside dp):\n";
        for (const auto& line : grid) ctx.out << "//   " << line << "\n";
      }
      for (const auto& w : r->warnings) ctx.out << "// warning: " << w.ToString() << "\n";
    }
    ctx.exit_code = kExitOk;
  });
}

// ------------------------------------------------------------------ estimate
json EstimateJson(const config::Config& c, const config::Estimate& e) {
  const auto& p = e.params;
  json layers = json::array();
  for (const auto& l : p.layers) {
    layers.push_back({{"index", l.index}, {"kind", l.moe ? "moe" : "dense"}, {"attention", l.attention},
                      {"ffn", l.ffn}, {"norms", l.norms}, {"total", l.total}, {"activated", l.activated}});
  }
  return {
      {"parameters",
       {{"total", p.total}, {"activated", p.activated}, {"main_total", p.main_total},
        {"main_activated", p.main_activated}, {"embedding", p.embedding}, {"lm_head", p.lm_head},
        {"final_norm", p.final_norm}, {"attention", p.attention}, {"dense_ffn", p.dense_ffn},
        {"router", p.router}, {"routed_experts", p.routed_experts}, {"shared_experts", p.shared_experts},
        {"layer_norms", p.layer_norms}, {"mtp_modules", p.mtp_modules}, {"mtp_total", p.mtp_total},
        {"mtp_activated", p.mtp_activated}, {"mtp_hf_stored", p.mtp_hf_stored}, {"layers", layers}}},
      {"flops_per_token",
       {{"train_total", e.flops.total}, {"train_dense_matmul", e.flops.dense_matmul},
        {"train_attention", e.flops.attention}, {"train_mtp", e.flops.mtp}, {"forward_main", e.flops.forward}}},
      {"memory_per_gpu_bytes",
       {{"weights", e.memory.weights}, {"gradients", e.memory.gradients}, {"optimizer", e.memory.optimizer},
        {"host_optimizer", e.memory.host_optimizer}, {"total", e.memory.total},
        {"params_on_gpu", e.memory.params_on_gpu}, {"activations", e.memory.activations},
        {"activations_attention", e.memory.activations_attention},
        {"activations_loss", e.memory.activations_loss}, {"fused_kernels", c.model.fused_kernels}}},
      {"run",
       {{"tokens_per_step", c.derived.tokens_per_step},
        {"train_steps", c.training.train_steps.value_or(0)},
        {"total_training_tokens", c.training.total_training_tokens.value_or(0)},
        {"chinchilla_tokens", c.derived.chinchilla_tokens},
        {"training_flops", e.flops.total * static_cast<double>(c.training.total_training_tokens.value_or(0))}}},
  };
}

std::string EstimateText(const config::Config& c, const config::Estimate& e, bool per_layer) {
  const auto& p = e.params;
  const auto& m = c.model;
  int64_t dense_layers = 0, moe_layers = 0;
  for (const auto& l : p.layers) (l.moe ? moe_layers : dense_layers)++;
  const auto row = [](const std::string& name, int64_t total, std::optional<int64_t> active) {
    return std::vector<std::string>{name, Grouped(total), HumanCount(static_cast<double>(total)),
                                    active ? HumanCount(static_cast<double>(*active)) : ""};
  };
  const int64_t k = m.moe.num_experts_per_token;
  std::vector<std::vector<std::string>> rows = {
      {"Parameters", "count", "", "activated/token"},
      row("  embedding", p.embedding, p.embedding),
      row("  attention (MLA, " + std::to_string(p.layers.size()) + " layers)", p.attention, p.attention),
      row("  dense FFN (" + std::to_string(dense_layers) + " layers)", p.dense_ffn, p.dense_ffn),
      row("  routed experts (" + std::to_string(moe_layers) + " layers x " + std::to_string(m.moe.num_experts) + ")",
          p.routed_experts, moe_layers * k * p.one_routed_expert),
      row("  shared experts", p.shared_experts, p.shared_experts),
      row("  routers", p.router, p.router),
      row("  norms", p.layer_norms + p.final_norm, p.layer_norms + p.final_norm),
      row(m.tie_word_embeddings ? "  output head (tied)" : "  output head", p.lm_head, p.lm_head),
      row("  main model", p.main_total, p.main_activated),
      row("  MTP modules (" + std::to_string(p.mtp_modules) + ", embedding and head shared)", p.mtp_total,
          p.mtp_activated),
      row("  total trained", p.total, p.activated),
  };
  if (p.mtp_modules > 0) {
    rows.push_back(row("  MTP as stored in HF checkpoints", p.mtp_hf_stored, std::nullopt));
  }
  std::ostringstream os;
  os << RenderTable(rows) << "\n";
  if (per_layer) {
    std::vector<std::vector<std::string>> lrows = {{"Layer", "kind", "attention", "ffn", "total", "activated"}};
    for (const auto& l : p.layers) {
      lrows.push_back({"  " + std::to_string(l.index), l.moe ? "moe" : "dense",
                       HumanCount(static_cast<double>(l.attention)), HumanCount(static_cast<double>(l.ffn)),
                       HumanCount(static_cast<double>(l.total)), HumanCount(static_cast<double>(l.activated))});
    }
    os << RenderTable(lrows) << "\n";
  }
  const auto& t = c.training;
  const auto& d = c.distributed;
  const std::string precision = t.use_fp8 ? "fp8" : t.use_bf16 ? "bf16" : t.use_fp16 ? "fp16" : "fp32";
  const double tokens = static_cast<double>(t.total_training_tokens.value_or(0));
  std::vector<std::vector<std::string>> crow = {
      {"Compute per token", "", ""},
      {"  training FLOPs (forward + backward)", HumanFlops(e.flops.total), ""},
      {"    matmuls (6 x activated)", HumanFlops(e.flops.dense_matmul), ""},
      {"    attention scores (seq " + std::to_string(t.seq_length) + ")", HumanFlops(e.flops.attention), ""},
      {"    MTP modules", HumanFlops(e.flops.mtp), ""},
      {"  forward only (main model)", HumanFlops(e.flops.forward), ""},
      {"Memory per GPU (" + precision + ", " + t.optimizer + ", ZeRO-" + std::to_string(c.derived.effective_zero_stage) +
           ", dp " + std::to_string(d.data_parallel_size) + ", ep " + std::to_string(d.expert_parallel_size) +
           ", tp " + std::to_string(d.tensor_parallel_size) + ", pp " + std::to_string(d.pipeline_parallel_size) +
           (d.pipeline_parallel_size > 1 ? "; stage " + std::to_string(e.memory.pipeline_stage) + ", the largest" : "") +
           ")",
       "", ""},
      {"  weights (" + std::to_string(e.memory.weight_bytes) + " B/param)", HumanBytes(e.memory.weights), ""},
      {"  gradients", HumanBytes(e.memory.gradients), ""},
      {"  optimizer state (" + std::to_string(e.memory.optimizer_bytes) + " B/param)",
       HumanBytes(e.memory.optimizer), ""},
      {"  total without activations", HumanBytes(e.memory.total), ""},
      {"  activations, micro-batch " + std::to_string(t.micro_batch_size) + " x " + std::to_string(t.seq_length) +
           (c.model.fused_kernels ? " (fused kernels" : " (unfused") +
           (c.model.gradient_checkpointing ? ", checkpointed)" : ")"),
       HumanBytes(e.memory.activations), ""},
      {"    of which attention", HumanBytes(e.memory.activations_attention), ""},
      {"    of which loss (logits)", HumanBytes(e.memory.activations_loss), ""},
      {"  total with activations", HumanBytes(e.memory.total + e.memory.activations), ""},
  };
  if (e.memory.host_optimizer > 0) {
    crow.push_back({"  optimizer state in host memory (offload)", HumanBytes(e.memory.host_optimizer), ""});
  }
  crow.push_back({"Run", "", ""});
  crow.push_back({"  tokens per step (" + std::to_string(t.global_batch_size) + " x " + std::to_string(t.seq_length) + ")",
                  Grouped(c.derived.tokens_per_step), ""});
  crow.push_back({"  steps", Grouped(t.train_steps.value_or(0)), ""});
  crow.push_back({"  training tokens", HumanCount(tokens),
                  HumanCount(tokens / static_cast<double>(p.total)) + " tokens/param"});
  crow.push_back({"  Chinchilla tokens (" + HumanCount(t.tokens_per_parameter_ratio) + " x params)",
                  HumanCount(static_cast<double>(c.derived.chinchilla_tokens)), ""});
  crow.push_back({"  gradient accumulation steps", std::to_string(c.derived.gradient_accumulation_steps), ""});
  crow.push_back({"  training compute", HumanFlops(e.flops.total * tokens), ""});
  os << RenderTable(crow);
  return os.str();
}

void AddEstimate(CLI::App& parent, CliContext& ctx) {
  struct State {
    std::string file;
    LoadFlags flags;
    bool per_layer = false;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = parent.add_subcommand(
      "estimate", "Parameters (total, activated, per component), FLOPs per token, memory per GPU, run length");
  verb->add_option("FILE", st->file, "Config file")->required();
  verb->add_flag("--layers", st->per_layer, "Also list every layer");
  st->flags.Add(*verb);
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    auto r = LoadOrReport(st->file, st->flags, st->format, ctx);
    if (!r) return;
    const config::Estimate e = config::EstimateConfig(r->config);
    if (st->format == OutputFormat::kJson) {
      ctx.out << EstimateJson(r->config, e).dump(2) << "\n";
    } else {
      ctx.out << st->file << " (" << r->config.experiment_name << ")\n\n" << EstimateText(r->config, e, st->per_layer);
    }
    ctx.exit_code = kExitOk;
  });
}

// ------------------------------------------------------------------ import-hf
void AddImportHf(CLI::App& parent, CliContext& ctx) {
  struct State {
    std::string file;
    std::string output_file;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = parent.add_subcommand(
      "import-hf", "Turn a HuggingFace DeepSeek-V2/V3 config.json into a complete dsv3 config");
  verb->add_option("CONFIG_JSON", st->file, "HuggingFace config.json")->required();
  verb->add_option("-o,--out", st->output_file, "Write the config here instead of standard output");
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    std::ifstream in(st->file);
    json hf;
    std::string why;
    if (!in) {
      why = "cannot be opened";
    } else {
      try {
        hf = json::parse(in, nullptr, true, true);
      } catch (const json::exception& e) {
        why = std::string("is not valid JSON: ") + e.what();
      }
    }
    config::HfImportResult r;
    if (why.empty()) {
      r = config::ImportHfConfig(hf);
    } else {
      r.errors.push_back({"", st->file + " " + why});
    }
    ctx.exit_code = r.ok() ? kExitOk : kExitFailed;
    if (r.ok() && !st->output_file.empty()) {
      std::ofstream file(st->output_file);
      file << r.config.dump(2) << "\n";
      if (!file) {
        r.errors.push_back({"", "cannot write " + st->output_file});
        ctx.exit_code = kExitFailed;
      }
    }
    if (st->format == OutputFormat::kJson) {
      ctx.out << json{{"config", r.ok() ? r.config : json()},
                      {"errors", DiagnosticsJson(r.errors)},
                      {"warnings", DiagnosticsJson(r.warnings)}}
                     .dump(2)
              << "\n";
      return;
    }
    PrintDiagnostics(ctx.err, st->file, "warning: ", r.warnings);
    PrintDiagnostics(ctx.err, st->file, "", r.errors);
    if (!r.ok()) return;
    if (st->output_file.empty()) {
      ctx.out << r.config.dump(2) << "\n";
    } else {
      ctx.out << "wrote " << st->output_file << "\n";
    }
  });
}

}  // namespace

void AddConfigCommands(CLI::App& app, CliContext& ctx) {
  CLI::App* config = app.add_subcommand("config", "Validate, resolve, estimate and import training configs");
  config->require_subcommand(1);
  AddValidate(*config, ctx);
  AddShow(*config, ctx);
  AddEstimate(*config, ctx);
  AddImportHf(*config, ctx);
}

}  // namespace dsv3::cli
