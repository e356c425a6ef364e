// From text or file to a resolved Config: JSON with comments, "extends" inheritance, the
// DeepSpeed config file, then the typed read (config_codec.cc) and the cross-field
// validation (config_validate.cc).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "config_codec.h"
#include "config_validate.h"
#include "dsv3/common/config_io.h"

namespace dsv3::config {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using internal::Show;

constexpr int kMaxExtendsDepth = 16;
constexpr size_t kMaxConfigBytes = 16 << 20;

struct LoadState {
  std::vector<Diagnostic> errors;
  std::vector<Diagnostic> warnings;
  std::vector<std::string> files;
};

bool ReadFile(const fs::path& path, std::string& out, std::string& why) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    why = fs::exists(path, ec) ? "is not a regular file" : "does not exist";
    return false;
  }
  if (fs::file_size(path, ec) > kMaxConfigBytes) {
    why = "is larger than 16 MiB";
    return false;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    why = "cannot be opened for reading";
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

// Parses JSON text allowing comments. `where` names the source for the error message.
bool ParseJson(std::string_view text, const std::string& where, json& out, LoadState& st) {
  try {
    out = json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/true,
                      /*ignore_comments=*/true);
  } catch (const json::exception& e) {
    // parse_error, or out_of_range for numbers beyond double. nlohmann's message carries the
    // line and column: "[json.exception.parse_error.101] parse error at line 3, column 5:
    // ..." -- keep everything after the tag.
    std::string what = e.what();
    const size_t tag_end = what.find("] ");
    if (tag_end != std::string::npos) what = what.substr(tag_end + 2);
    st.errors.push_back({"", where + ": invalid JSON: " + what});
    return false;
  }
  if (!out.is_object()) {
    st.errors.push_back({"", where + ": a config must be a JSON object, got " + Show(out)});
    return false;
  }
  return true;
}

// Objects merge key by key; any other value in `overlay` (lists included) replaces.
void DeepMerge(json& base, const json& overlay) {
  for (const auto& [key, value] : overlay.items()) {
    auto it = base.find(key);
    if (it != base.end() && it->is_object() && value.is_object()) {
      DeepMerge(*it, value);
    } else {
      base[key] = value;
    }
  }
}

// Resolves "extends" of `doc` (read from `dir`) recursively; `chain` holds the files being
// loaded, to report cycles.
bool ResolveExtends(json& doc, const fs::path& dir, std::vector<fs::path>& chain, LoadState& st) {
  auto it = doc.find("extends");
  if (it == doc.end()) return true;
  std::vector<std::string> bases;
  if (it->is_string()) {
    bases.push_back(it->get<std::string>());
  } else if (it->is_array() && std::all_of(it->begin(), it->end(), [](const json& j) { return j.is_string(); })) {
    for (const auto& b : *it) bases.push_back(b.get<std::string>());
  } else {
    st.errors.push_back({"/extends", "expected a file path or a list of file paths, got " + Show(*it)});
    return false;
  }
  doc.erase(it);
  if (chain.size() >= kMaxExtendsDepth) {
    st.errors.push_back({"/extends", "inheritance deeper than 16 files"});
    return false;
  }
  json merged = json::object();
  for (const auto& base : bases) {
    fs::path path = fs::path(base).is_absolute() ? fs::path(base) : dir / base;
    std::error_code ec;
    const fs::path canonical = fs::weakly_canonical(path, ec);
    if (std::find(chain.begin(), chain.end(), canonical) != chain.end()) {
      std::string cycle;
      for (const auto& p : chain) cycle += p.string() + " -> ";
      st.errors.push_back({"/extends", "inheritance cycle: " + cycle + canonical.string()});
      return false;
    }
    std::string text, why;
    if (!ReadFile(path, text, why)) {
      st.errors.push_back({"/extends", "base config \"" + base + "\" (" + path.string() + ") " + why});
      return false;
    }
    json base_doc;
    if (!ParseJson(text, path.string(), base_doc, st)) return false;
    chain.push_back(canonical);
    const bool ok = ResolveExtends(base_doc, path.parent_path(), chain, st);
    chain.pop_back();
    if (!ok) return false;
    st.files.push_back(path.string());
    DeepMerge(merged, base_doc);
  }
  DeepMerge(merged, doc);
  doc = std::move(merged);
  return true;
}

// Accepts the layout where `deepspeed` and `slurm` sit inside `distributed` by moving them
// to the top level, their canonical place.
void HoistDistributedSections(json& doc, LoadState& st) {
  auto dist = doc.find("distributed");
  if (dist == doc.end() || !dist->is_object()) return;
  for (const char* name : {"deepspeed", "slurm"}) {
    auto inner = dist->find(name);
    if (inner == dist->end()) continue;
    if (doc.contains(name)) {
      st.errors.push_back({std::string("/distributed/") + name,
                           std::string("given both here and as top-level \"") + name + "\"; keep one"});
    } else {
      doc[name] = *inner;
    }
    dist->erase(inner);
  }
}

// DeepSpeed keys we map into our `deepspeed` section ("" = mapped elsewhere, checked).
bool IsMappedDeepSpeedKey(const std::string& pointer) {
  static const std::set<std::string> kMapped = {
      "/fp16/enabled", "/bf16/enabled", "/zero_optimization/stage",
      "/zero_optimization/offload_optimizer/device", "/zero_optimization/offload_param/device",
      "/zero_optimization/overlap_comm", "/zero_optimization/contiguous_gradients",
      "/zero_optimization/reduce_bucket_size", "/gradient_accumulation_steps",
      "/gradient_clipping", "/train_batch_size", "/train_micro_batch_size_per_gpu"};
  return kMapped.count(pointer) != 0;
}

// Merges deepspeed.config_file (DeepSpeed's own format) under the inline section; values
// written in the inline section win. Keys dsv3 does not honor are listed in a warning.
// Returns the file merged, or "" when there was none.
std::string MergeDeepSpeedFile(json& doc, const fs::path& dir, LoadState& st) {
  auto ds = doc.find("deepspeed");
  if (ds == doc.end() || !ds->is_object()) return "";
  const auto enabled = ds->find("enabled");
  const auto file = ds->find("config_file");
  if (file == ds->end() || !file->is_string()) return "";
  if (enabled == ds->end() || !enabled->is_boolean() || !enabled->get<bool>()) return "";
  const std::string name = file->get<std::string>();
  // The guide writes "configs/deepspeed_zero1.json", relative to the project root the job is
  // launched from: look in the working directory, then in the config's directory and its
  // ancestors (so a config in configs/ finds it wherever dsv3ctl runs).
  fs::path path = name;
  std::error_code ec;
  if (path.is_relative() && !fs::exists(path, ec)) {
    for (fs::path d = fs::absolute(dir, ec); !d.empty(); d = d.parent_path()) {
      if (fs::exists(d / name, ec)) {
        path = d / name;
        break;
      }
      if (d == d.parent_path()) break;
    }
  }
  std::string text, why;
  if (!ReadFile(path, text, why)) {
    st.errors.push_back({"/deepspeed/config_file", Show(*file) + " " + why +
                                                       " (looked in the working directory and in the config's directory and its parents)"});
    return "";
  }
  json ds_file;
  LoadState local;
  if (!ParseJson(text, path.string(), ds_file, local)) {
    for (auto& e : local.errors) st.errors.push_back({"/deepspeed/config_file", e.message});
    return "";
  }
  json mapped = json::object();
  std::vector<std::string> ignored;
  const json flat = ds_file.flatten();
  for (const auto& [pointer, value] : flat.items()) {
    if (value.is_string() && value.get<std::string>() == "auto") continue;  // HF Trainer's "auto"
    if (IsMappedDeepSpeedKey(pointer)) {
      mapped[json::json_pointer(pointer)] = value;
    } else {
      ignored.push_back(pointer.substr(1));
    }
  }
  // Batch sizes belong to `training`; DeepSpeed's must agree with ours.
  for (const auto& [key, ours] : {std::pair{"train_batch_size", "global_batch_size"},
                                  std::pair{"train_micro_batch_size_per_gpu", "micro_batch_size"}}) {
    if (!mapped.contains(key)) continue;
    const json& theirs = mapped[key];
    const json* training = doc.contains("training") && doc["training"].is_object() ? &doc["training"] : nullptr;
    if (training != nullptr && training->contains(ours) && (*training)[ours] != theirs) {
      st.errors.push_back({"/training/" + std::string(ours),
                           Show((*training)[ours]) + " disagrees with " + key + " = " + Show(theirs) +
                               " in " + path.string()});
    } else if (theirs.is_number()) {
      doc["training"][ours] = theirs;
    }
    mapped.erase(key);
  }
  DeepMerge(mapped, *ds);
  mapped["config_file"] = nullptr;
  *ds = std::move(mapped);
  if (!ignored.empty()) {
    std::string list;
    for (const auto& k : ignored) list += (list.empty() ? "" : ", ") + k;
    st.warnings.push_back({"/deepspeed/config_file", "keys of " + path.string() +
                                                         " that dsv3 does not honor: " + list});
  }
  return path.string();
}

LoadResult Finish(json doc, const fs::path& dir, const LoadOptions& options, LoadState st) {
  LoadResult result;
  HoistDistributedSections(doc, st);
  if (options.enable_deepspeed && doc.is_object()) {
    if (!doc.contains("deepspeed") || !doc["deepspeed"].is_object()) doc["deepspeed"] = json::object();
    doc["deepspeed"]["enabled"] = true;
  }
  const std::string deepspeed_file = MergeDeepSpeedFile(doc, dir, st);
  std::set<std::string> present;
  internal::ReadConfig(doc, result.config, st.errors, present);
  result.config.derived.deepspeed_config_file = deepspeed_file;
  internal::ValidateAndDerive(result.config, present, options, st.errors, st.warnings);
  result.errors = std::move(st.errors);
  result.warnings = std::move(st.warnings);
  result.files = std::move(st.files);
  return result;
}

}  // namespace

bool LooksLikeDeepSpeedConfig(const std::string& path) {
  std::string text, why;
  if (!ReadFile(path, text, why)) return false;
  LoadState st;
  json doc;
  if (!ParseJson(text, path, doc, st)) return false;
  static const char* const kOurs[] = {"model", "training", "data", "distributed", "extends", "experiment_name"};
  static const char* const kTheirs[] = {"zero_optimization", "train_batch_size", "train_micro_batch_size_per_gpu",
                                        "fp16", "bf16", "optimizer", "scheduler", "gradient_clipping"};
  for (const char* key : kOurs) {
    if (doc.contains(key)) return false;
  }
  for (const char* key : kTheirs) {
    if (doc.contains(key)) return true;
  }
  return false;
}

LoadResult ValidateDeepSpeedFile(const std::string& path) {
  // Validate it exactly as a job would read it: as the config_file of an enabled section.
  std::error_code ec;
  const json doc = {{"deepspeed", {{"enabled", true}, {"config_file", fs::absolute(path, ec).string()}}}};
  LoadResult r = LoadConfigText(doc.dump());
  // Report paths relative to the DeepSpeed file itself.
  for (auto* list : {&r.errors, &r.warnings}) {
    for (auto& d : *list) {
      if (d.path == "/deepspeed/config_file") {
        d.path = "";
      } else if (d.path.rfind("/deepspeed", 0) == 0) {
        d.path = d.path.substr(10);
      }
    }
  }
  return r;
}

LoadResult LoadConfigText(std::string_view text, const LoadOptions& options) {
  LoadState st;
  json doc;
  if (text.size() > kMaxConfigBytes) {
    st.errors.push_back({"", "config text is larger than 16 MiB"});
  } else if (ParseJson(text, "config", doc, st)) {
    std::vector<fs::path> chain;
    if (ResolveExtends(doc, options.base_dir, chain, st)) {
      return Finish(std::move(doc), options.base_dir, options, std::move(st));
    }
  }
  LoadResult result;
  result.errors = std::move(st.errors);
  return result;
}

LoadResult LoadConfigFile(const std::string& path_string, const LoadOptions& options) {
  LoadState st;
  const fs::path path = path_string;
  std::string text, why;
  json doc;
  if (!ReadFile(path, text, why)) {
    st.errors.push_back({"", path_string + " " + why});
  } else if (ParseJson(text, path_string, doc, st)) {
    std::error_code ec;
    std::vector<fs::path> chain{fs::weakly_canonical(path, ec)};
    const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    if (ResolveExtends(doc, dir, chain, st)) {
      st.files.push_back(path_string);
      return Finish(std::move(doc), dir, options, std::move(st));
    }
  }
  LoadResult result;
  result.errors = std::move(st.errors);
  return result;
}

}  // namespace dsv3::config
