#include "jobs/job_config.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "dsv3/common/checkpoint_layout.h"
#include "dsv3/common/estimator.h"
#include "dsv3/common/hf_import.h"
#include "dsv3/common/parallel_layout.h"

namespace dsv3::server {
namespace fs = std::filesystem;

std::string AbsoluteUnder(const std::string& dir, const std::string& path) {
  fs::path p(path);
  if (p.is_relative()) p = fs::path(dir) / p;
  return p.lexically_normal().string();
}

namespace {

void AbsolutizeString(nlohmann::json& j, const char* key, const std::string& base) {
  if (j.contains(key) && j[key].is_string() && !j[key].get<std::string>().empty()) {
    j[key] = AbsoluteUnder(base, j[key].get<std::string>());
  }
}

void AbsolutizeSources(nlohmann::json& sources, const std::string& base) {
  if (!sources.is_array()) return;
  for (auto& s : sources) {
    if (!s.contains("paths") || !s["paths"].is_array()) continue;
    for (auto& p : s["paths"]) {
      if (p.is_string()) p = AbsoluteUnder(base, p.get<std::string>());
    }
  }
}

// `path` with every symlink of its existing part resolved (the part that does not exist yet
// is kept as named), normalized.
fs::path Resolved(const fs::path& path) {
  std::error_code ec;
  fs::path out = fs::weakly_canonical(path, ec);
  return ec ? path.lexically_normal() : out;
}

bool Inside(const fs::path& path, const fs::path& root) {
  const fs::path rel = path.lexically_relative(root);
  return !rel.empty() && *rel.begin() != "..";
}

// Checks the confined user's paths in the resolved config (input paths already absolute).
class PathChecker {
 public:
  PathChecker(const PathPolicy& p, std::vector<FieldProblem>& errors) : p_(p), errors_(errors) {}

  // An output named relative to the job's folder, or absolute.
  void Output(const std::string& field, const std::string& value, bool relative_to_job) {
    if (value.empty()) return;
    fs::path named(value);
    if (named.is_relative() && relative_to_job) {
      const fs::path rel = named.lexically_normal();
      if (!rel.empty() && *rel.begin() == "..") Refuse(field, value, "leaves the job's folder");
      return;
    }
    const fs::path real = Resolved(named);
    if (!Inside(real, Resolved(p_.work_root))) Refuse(field, value, Where(real));
  }

  void Input(const std::string& field, const std::string& value) {
    if (value.empty()) return;
    // A glob is checked up to its first wildcard: the folder it searches.
    fs::path named = fs::path(value).lexically_normal();
    const std::string text = named.string();
    const size_t wild = text.find_first_of("*?[");
    if (wild != std::string::npos) named = fs::path(text.substr(0, wild)).parent_path();
    const fs::path real = Resolved(named);
    if (Inside(real, Resolved(p_.work_root))) return;
    for (const auto& root : p_.read_roots) {
      if (Inside(real, Resolved(root))) return;
    }
    const fs::path jobs = Resolved(p_.jobs_root);
    if (Inside(real, jobs)) {
      const std::string id = real.lexically_relative(jobs).begin()->string();
      if (id.find_first_not_of("0123456789") == std::string::npos && id.size() < 18 && p_.owns_job &&
          p_.owns_job(std::stoll(id))) {
        return;
      }
    }
    Refuse(field, value, Where(real));
  }

 private:
  std::string Where(const fs::path& real) const {
    std::string roots = p_.work_root;
    for (const auto& r : p_.read_roots) roots += ", " + r;
    return "resolves to " + real.string() + ", outside your work root (" + roots + ")";
  }
  void Refuse(const std::string& field, const std::string& value, const std::string& why) {
    errors_.push_back({field, "'" + value + "' " + why, kProblemPathNotAllowed});
  }

  const PathPolicy& p_;
  std::vector<FieldProblem>& errors_;
};

void CheckPaths(const nlohmann::json& j, const PathPolicy& policy, std::vector<FieldProblem>& errors) {
  PathChecker check(policy, errors);
  const auto str = [](const nlohmann::json& o, const char* key) {
    return o.is_object() && o.contains(key) && o[key].is_string() ? o[key].get<std::string>() : std::string();
  };
  check.Output("/output_dir", str(j, "output_dir"), true);
  if (j.contains("checkpointing")) check.Output("/checkpointing/dir", str(j["checkpointing"], "dir"), true);
  if (j.contains("logging") && j["logging"].contains("tensorboard")) {
    check.Output("/logging/tensorboard/log_dir", str(j["logging"]["tensorboard"], "log_dir"), true);
  }
  if (j.contains("slurm")) {
    check.Output("/slurm/output", str(j["slurm"], "output"), true);
    check.Output("/slurm/error", str(j["slurm"], "error"), true);
  }
  const nlohmann::json& data = j.contains("data") ? j["data"] : nlohmann::json::object();
  check.Output("/data/cache_dir", str(data, "cache_dir"), false);
  const auto sources = [&](const nlohmann::json& list, const std::string& where) {
    if (!list.is_array()) return;
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].contains("paths") || !list[i]["paths"].is_array()) continue;
      for (size_t k = 0; k < list[i]["paths"].size(); ++k) {
        const auto& p = list[i]["paths"][k];
        if (p.is_string()) check.Input(where + "/" + std::to_string(i) + "/paths/" + std::to_string(k), p);
      }
    }
  };
  if (data.contains("sources")) sources(data["sources"], "/data/sources");
  if (data.contains("tokenizer")) check.Input("/data/tokenizer/model", str(data["tokenizer"], "model"));
  if (j.contains("validation") && j["validation"].contains("sources")) {
    sources(j["validation"]["sources"], "/validation/sources");
  }
  if (j.contains("deepspeed")) check.Input("/deepspeed/config_file", str(j["deepspeed"], "config_file"));
  if (j.contains("checkpointing")) {
    const std::string resume = str(j["checkpointing"], "resume_from");
    if (resume != "latest") check.Input("/checkpointing/resume_from", resume);
    check.Input("/checkpointing/init_from_hf", str(j["checkpointing"], "init_from_hf"));
  }
}

// A HF directory that dsv3d can read must describe the config's model (the worker checks
// again, and is the only check where the directory is on the compute nodes only).
void CheckHfInit(const config::Config& c, const std::string& dir, std::vector<FieldProblem>& errors) {
  std::ifstream in(dir + "/config.json");
  if (!in) return;
  const nlohmann::json hf = nlohmann::json::parse(in, nullptr, false);
  if (hf.is_discarded()) {
    errors.push_back({"/checkpointing/init_from_hf", dir + "/config.json is not valid JSON", kProblemInvalidConfig});
    return;
  }
  for (const config::Diagnostic& d : config::CompareWithHfConfig(c, hf)) {
    errors.push_back({d.path, d.message + " (" + dir + "/config.json; `dsv3ctl config import-hf " + dir +
                                  "/config.json` writes a matching model section)",
                      kProblemInvalidConfig});
  }
}

std::vector<FieldProblem> ConfigProblems(const std::vector<config::Diagnostic>& list) {
  std::vector<FieldProblem> out;
  for (const auto& d : list) out.push_back({d.path, d.message, kProblemInvalidConfig});
  return out;
}

}  // namespace

PreparedConfig PrepareJobConfig(const std::string& config_json, int num_ranks, const std::string& resume_from,
                                const std::string& base_dir, const PathPolicy& policy) {
  PreparedConfig out;
  config::LoadOptions options;
  if (num_ranks > 0) options.world_size = num_ranks;
  options.base_dir = base_dir;
  config::LoadResult loaded = config::LoadConfigText(config_json, options);
  out.errors = ConfigProblems(loaded.errors);
  out.warnings = ConfigProblems(loaded.warnings);
  if (!loaded.ok()) return out;
  config::Config& c = loaded.config;
  if (!resume_from.empty()) c.checkpointing.resume_from = resume_from;
  out.experiment_name = c.experiment_name;
  out.total_steps = c.training.train_steps.value_or(0);  // resolved from the token budget when absent
  out.max_restarts = c.max_restarts;
  out.intra_op_threads = c.training.intra_op_threads;
  out.world_size = c.derived.world_size;
  out.output_dir = c.output_dir;
  out.checkpoint_dir = config::CheckpointDir(c.checkpointing.dir, c.output_dir);
  out.tensorboard_dir = c.logging.tensorboard.enabled ? c.logging.tensorboard.log_dir : "";
  out.plan = PlanFromConfig(c);
  {
    // What one rank holds in memory by the estimator (on a CPU rank all of it is host
    // memory): model state, optimizer state, activations of a micro-batch.
    const config::MemoryEstimate m = config::EstimateConfig(c).memory;
    out.memory_per_rank = m.total + m.host_optimizer + m.activations;
    char text[200];
    std::snprintf(text, sizeof(text), "weights %.1f GiB, gradients %.1f GiB, optimizer %.1f GiB, activations %.1f GiB",
                  m.weights / 1073741824.0, m.gradients / 1073741824.0, (m.optimizer + m.host_optimizer) / 1073741824.0,
                  m.activations / 1073741824.0);
    out.memory_breakdown = text;
  }
  if (out.world_size > 1) out.grid = config::DescribeGrid(c);

  nlohmann::json j = config::ToJson(c);
  auto& data = j["data"];
  AbsolutizeSources(data["sources"], base_dir);
  AbsolutizeString(data, "cache_dir", base_dir);
  if (data.contains("tokenizer")) AbsolutizeString(data["tokenizer"], "model", base_dir);
  if (j.contains("validation")) AbsolutizeSources(j["validation"]["sources"], base_dir);
  if (j.contains("deepspeed")) AbsolutizeString(j["deepspeed"], "config_file", base_dir);
  auto& ckpt = j["checkpointing"];
  if (ckpt.contains("resume_from") && ckpt["resume_from"].is_string() && ckpt["resume_from"] != "latest") {
    AbsolutizeString(ckpt, "resume_from", base_dir);
  }
  AbsolutizeString(ckpt, "init_from_hf", base_dir);
  if (ckpt.contains("init_from_hf") && ckpt["init_from_hf"].is_string()) {
    CheckHfInit(c, ckpt["init_from_hf"].get<std::string>(), out.errors);
  }
  if (policy.confined) {
    CheckPaths(j, policy, out.errors);
    if (!out.errors.empty()) return out;
  }
  out.resolved = std::move(j);
  return out;
}

}  // namespace dsv3::server
