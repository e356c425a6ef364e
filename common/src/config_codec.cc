#include "config_codec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <type_traits>

#include "config_schema.h"

namespace dsv3::config {

using nlohmann::json;

std::string Diagnostic::ToString() const {
  return path.empty() ? message : path + ": " + message;
}

const std::vector<std::string>& DolmaSubsets() {
  static const std::vector<std::string> kSubsets = {
      "dolma_v1_6_cc",          "dolma_v1_6_refined_web", "dolma_v1_6_starcoder",
      "dolma_v1_6_c4",          "dolma_v1_6_reddit",      "dolma_v1_6_pes2o",
      "dolma_v1_6_redpajama",   "dolma_v1_6_flan",        "dolma_v1_6_openwebmath",
      "dolma_v1_6_proof_pile_2", "dolma_v1_6_gutenberg",  "dolma_v1_6_metawika",
      "dolma_v1_6_wikimedia"};
  return kSubsets;
}

std::vector<DataSource> DefaultDolmaSources() {
  static const std::pair<const char*, double> kTable[] = {
      {"dolma_v1_6_cc", 0.35},         {"dolma_v1_6_refined_web", 0.15}, {"dolma_v1_6_starcoder", 0.065},
      {"dolma_v1_6_c4", 0.10},         {"dolma_v1_6_reddit", 0.05},      {"dolma_v1_6_pes2o", 0.10},
      {"dolma_v1_6_redpajama", 0.05},  {"dolma_v1_6_flan", 0.03},        {"dolma_v1_6_openwebmath", 0.05},
      {"dolma_v1_6_proof_pile_2", 0.02}, {"dolma_v1_6_gutenberg", 0.015}, {"dolma_v1_6_metawika", 0.0075},
      {"dolma_v1_6_wikimedia", 0.0125}};
  std::vector<DataSource> out;
  for (const auto& [subset, weight] : kTable) {
    DataSource s;
    s.name = subset;
    s.subset = subset;
    s.weight = weight;
    s.paths = {std::string("data/dolma/") + subset + "/*.json.gz"};
    out.push_back(std::move(s));
  }
  return out;
}

namespace internal {
namespace {

using schema::Rule;

std::string TypeName(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "boolean";
    case json::value_t::string: return "string";
    case json::value_t::array: return "list";
    case json::value_t::object: return "object";
    case json::value_t::number_float: return "number";
    default: return "integer";
  }
}

std::string FormatNumber(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

std::string EscapePointerToken(const std::string& key) {
  std::string out;
  for (char ch : key) {
    if (ch == '~') out += "~0";
    else if (ch == '/') out += "~1";
    else out += ch;
  }
  return out;
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t subst = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// Reads one JSON object into config structs. Sub-objects get their own Reader.
class Reader {
 public:
  Reader(const json* obj, std::string pointer, std::vector<Diagnostic>& errors,
         std::set<std::string>& present)
      : obj_(obj), pointer_(std::move(pointer)), errors_(errors), present_(present) {}

  template <class T>
  void Field(const char* name, T& member, const Rule& rule) {
    known_.push_back(name);
    const json* value = Find(name);
    if (value == nullptr) return;
    const std::string path = PathOf(name);
    present_.insert(path);
    T parsed = member;
    if (Parse(*value, path, rule, parsed)) member = std::move(parsed);
  }

  // A second name for the field declared just before. Giving both with different values is
  // an error; giving only the alias sets the field.
  template <class T>
  void Alias(const char* alias, const char* canonical, T& member, const Rule& rule) {
    known_.push_back(alias);
    const json* value = Find(alias);
    if (value == nullptr) return;
    const std::string path = PathOf(alias);
    T parsed{};
    if (!Parse(*value, path, rule, parsed)) return;
    const std::string canonical_path = PathOf(canonical);
    if (present_.count(canonical_path) != 0) {
      if (!(parsed == member)) {
        Error(path, Show(*value) + " differs from " + canonical + " (" + Show(json(member)) +
                        "); they are aliases: give one of them or the same value in both");
      }
      return;
    }
    present_.insert(canonical_path);
    member = std::move(parsed);
  }

  template <class Fn>
  void Section(const char* name, Fn&& visit) {
    known_.push_back(name);
    const json* value = Find(name);
    const std::string path = PathOf(name);
    static const json kEmpty = json::object();
    if (value != nullptr && !value->is_object()) {
      Error(path, "expected an object, got " + Show(*value) + " (" + TypeName(*value) + ")");
      value = nullptr;
    }
    if (value != nullptr) present_.insert(path);
    Reader sub(value != nullptr ? value : &kEmpty, path, errors_, present_);
    visit(sub);
    sub.Finish();
  }

  template <class T, class Fn>
  void List(const char* name, std::vector<T>& out, Fn&& visit) {
    known_.push_back(name);
    const json* value = Find(name);
    if (value == nullptr) return;
    const std::string path = PathOf(name);
    present_.insert(path);
    if (!value->is_array()) {
      Error(path, "expected a list of objects, got " + Show(*value) + " (" + TypeName(*value) + ")");
      return;
    }
    out.clear();
    for (size_t i = 0; i < value->size(); ++i) {
      const std::string item_path = path + "/" + std::to_string(i);
      const json& item = (*value)[i];
      if (!item.is_object()) {
        Error(item_path, "expected an object, got " + Show(item) + " (" + TypeName(item) + ")");
        continue;
      }
      T element{};
      Reader sub(&item, item_path, errors_, present_);
      visit(sub, element);
      sub.Finish();
      out.push_back(std::move(element));
    }
  }

  // Reports the keys of this object that no field claimed.
  void Finish() {
    for (const auto& [key, value] : obj_->items()) {
      if (key.rfind("_comment", 0) == 0) continue;  // JSON's stand-in for comments
      if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
      std::string message = "unknown field \"" + key + "\"";
      const std::string guess = Suggest(key, known_);
      if (!guess.empty()) message += " (did you mean \"" + guess + "\"?)";
      Error(PathOf(key), message);
    }
  }

 private:
  const json* Find(const char* name) const {
    auto it = obj_->find(name);
    return it == obj_->end() ? nullptr : &*it;
  }
  std::string PathOf(const std::string& key) const { return pointer_ + "/" + EscapePointerToken(key); }
  void Error(const std::string& path, std::string message) {
    errors_.push_back({path, std::move(message)});
  }
  bool TypeError(const json& v, const std::string& path, const char* expected) {
    Error(path, "expected " + std::string(expected) + ", got " + Show(v) + " (" + TypeName(v) + ")");
    return false;
  }

  bool CheckRange(double x, const std::string& path, const Rule& rule, const json& v) {
    const bool low = rule.min && (rule.min_open ? x <= *rule.min : x < *rule.min);
    const bool high = rule.max && (rule.max_open ? x >= *rule.max : x > *rule.max);
    if (!low && !high) return true;
    std::string valid;
    if (rule.min && rule.max) {
      valid = "must be in " + std::string(rule.min_open ? "(" : "[") + FormatNumber(*rule.min) +
              ", " + FormatNumber(*rule.max) + (rule.max_open ? ")" : "]");
    } else if (rule.min) {
      valid = std::string("must be ") + (rule.min_open ? "> " : ">= ") + FormatNumber(*rule.min);
    } else {
      valid = std::string("must be ") + (rule.max_open ? "< " : "<= ") + FormatNumber(*rule.max);
    }
    Error(path, Show(v) + " is out of range: " + valid);
    return false;
  }

  bool Parse(const json& v, const std::string& path, const Rule&, bool& out) {
    if (!v.is_boolean()) return TypeError(v, path, "true or false");
    out = v.get<bool>();
    return true;
  }

  bool Parse(const json& v, const std::string& path, const Rule& rule, int64_t& out) {
    // DeepSpeed-style files write sizes as 5e8: accept floats that are whole numbers.
    if (v.is_number_integer()) {
      if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
        return TypeError(v, path, "an integer that fits in 64 bits");
      out = v.get<int64_t>();
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) > 9.0e18)
        return TypeError(v, path, "an integer");
      out = static_cast<int64_t>(d);
    } else {
      return TypeError(v, path, "an integer");
    }
    return CheckRange(static_cast<double>(out), path, rule, v);
  }

  bool Parse(const json& v, const std::string& path, const Rule& rule, double& out) {
    if (!v.is_number()) return TypeError(v, path, "a number");
    out = v.get<double>();
    if (!std::isfinite(out)) return TypeError(v, path, "a finite number");
    return CheckRange(out, path, rule, v);
  }

  bool Parse(const json& v, const std::string& path, const Rule& rule, std::string& out) {
    if (!v.is_string()) return TypeError(v, path, "a string");
    const std::string s = v.get<std::string>();
    if (rule.non_empty && s.empty()) {
      Error(path, "must not be empty");
      return false;
    }
    if (!rule.choices.empty() &&
        std::find(rule.choices.begin(), rule.choices.end(), s) == rule.choices.end()) {
      std::string valid;
      for (const auto& c : rule.choices) valid += (valid.empty() ? "" : ", ") + c;
      std::string message = Show(v) + " is not one of: " + valid;
      const std::string guess = Suggest(s, rule.choices);
      if (!guess.empty()) message += " (did you mean \"" + guess + "\"?)";
      Error(path, message);
      return false;
    }
    out = s;
    return true;
  }

  bool Parse(const json& v, const std::string& path, const Rule&, std::vector<std::string>& out) {
    if (!v.is_array()) return TypeError(v, path, "a list of strings");
    std::vector<std::string> items;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string()) {
        TypeError(v[i], path + "/" + std::to_string(i), "a string");
        return false;
      }
      items.push_back(v[i].get<std::string>());
    }
    out = std::move(items);
    return true;
  }

  bool Parse(const json& v, const std::string& path, const Rule& rule, std::vector<int64_t>& out) {
    if (!v.is_array()) return TypeError(v, path, "a list of integers");
    std::vector<int64_t> items(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      if (!Parse(v[i], path + "/" + std::to_string(i), rule, items[i])) return false;
    }
    out = std::move(items);
    return true;
  }

  template <class T>
  bool Parse(const json& v, const std::string& path, const Rule& rule, std::optional<T>& out) {
    if (v.is_null()) {
      out.reset();
      return true;
    }
    T inner{};
    if (!Parse(v, path, rule, inner)) return false;
    out = std::move(inner);
    return true;
  }

  const json* obj_;
  std::string pointer_;
  std::vector<Diagnostic>& errors_;
  std::set<std::string>& present_;
  std::vector<std::string> known_;
};

// Writes config structs as JSON under their canonical names.
class Writer {
 public:
  explicit Writer(json& out) : out_(out) {}

  template <class T>
  void Field(const char* name, const T& member, const Rule&) { out_[name] = Value(member); }
  template <class T>
  void Alias(const char*, const char*, const T&, const Rule&) {}
  template <class Fn>
  void Section(const char* name, Fn&& visit) {
    json sub = json::object();
    Writer w(sub);
    visit(w);
    out_[name] = std::move(sub);
  }
  template <class T, class Fn>
  void List(const char* name, std::vector<T>& items, Fn&& visit) {
    json arr = json::array();
    for (auto& item : items) {
      json sub = json::object();
      Writer w(sub);
      visit(w, item);
      arr.push_back(std::move(sub));
    }
    out_[name] = std::move(arr);
  }

 private:
  template <class T>
  static json Value(const T& v) { return json(v); }
  template <class T>
  static json Value(const std::optional<T>& v) { return v ? json(*v) : json(nullptr); }

  json& out_;
};

}  // namespace

std::string Show(const json& value) {
  std::string s = value.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

std::string Suggest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    const size_t d = EditDistance(word, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  // A typo changes a few characters; a different word changes most of them.
  const size_t limit = std::max<size_t>(2, word.size() / 3);
  return best_distance <= limit ? best : "";
}

void ReadConfig(const json& root, Config& config, std::vector<Diagnostic>& errors,
                std::set<std::string>& present) {
  Reader reader(&root, "", errors, present);
  schema::Visit(reader, config);
  reader.Finish();
}

}  // namespace internal

json ToJson(const Config& config) {
  json out = json::object();
  internal::Writer writer(out);
  // The visitors take non-const references because the reader fills them; the writer only
  // reads, so the cast does not let anything modify `config`.
  schema::Visit(writer, const_cast<Config&>(config));
  return out;
}

std::string ToJsonText(const Config& config, int indent) { return ToJson(config).dump(indent); }


namespace {

template <class Section>
json SectionToJson(const Section& section) {
  json out = json::object();
  internal::Writer writer(out);
  schema::Visit(writer, const_cast<Section&>(section));  // read only, as in ToJson
  return out;
}

template <class Section>
Section SectionFromJson(const json& j, const std::string& where, std::vector<Diagnostic>& errors) {
  Section section;
  if (!j.is_object()) {
    errors.push_back({where, "expected an object, got " + internal::Show(j)});
    return section;
  }
  std::set<std::string> present;
  internal::Reader reader(&j, where, errors, present);
  schema::Visit(reader, section);
  reader.Finish();
  return section;
}

}  // namespace

json SlurmToJson(const SlurmConfig& slurm) { return SectionToJson(slurm); }

SlurmConfig SlurmFromJson(const json& section, std::vector<Diagnostic>& errors) {
  return SectionFromJson<SlurmConfig>(section, "/slurm", errors);
}

json WatchdogToJson(const WatchdogConfig& watchdog) { return SectionToJson(watchdog); }

WatchdogConfig WatchdogFromJson(const json& section, std::vector<Diagnostic>& errors) {
  return SectionFromJson<WatchdogConfig>(section, "/watchdog", errors);
}

}  // namespace dsv3::config

namespace dsv3::config {

nlohmann::json DerivedToJson(const Config& config) {
  const DerivedValues& d = config.derived;
  nlohmann::json layers = nlohmann::json::array();
  for (bool moe : d.layer_is_moe) layers.push_back(moe ? "moe" : "dense");
  return {
      {"world_size", d.world_size},
      {"world_size_source", d.world_size_given ? "given" : "assumed from the config"},
      {"data_parallel_size", config.distributed.data_parallel_size},
      {"gradient_accumulation_steps", d.gradient_accumulation_steps},
      {"tokens_per_step", d.tokens_per_step},
      {"train_steps", config.training.train_steps ? nlohmann::json(*config.training.train_steps) : nlohmann::json()},
      {"total_training_tokens", config.training.total_training_tokens
                                    ? nlohmann::json(*config.training.total_training_tokens)
                                    : nlohmann::json()},
      {"chinchilla_tokens", d.chinchilla_tokens},
      {"source_weight_sum", d.source_weight_sum},
      {"zero_stage", d.effective_zero_stage},
      {"optimizer_offload", d.optimizer_offload},
      {"deepspeed_config_file", d.deepspeed_config_file},
      {"layer_plan", layers},
  };
}

}  // namespace dsv3::config
