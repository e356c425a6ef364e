// A synthetic Dolma v1.6 corpus: for each of the guide's 13 sources, documents whose text
// has that source's flavour (web pages, code, arithmetic, proofs, dialogue, ...) and real
// structure a small model can learn: consistent templates, true arithmetic, code whose body
// follows from its name. Deterministic for a seed.
#include "dsv3/data/synth.h"

#include <zlib.h>

#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/common/config.h"

namespace dsv3::data {
namespace {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t Int(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Next() % static_cast<uint64_t>(hi - lo + 1)); }
  template <class T>
  const T& Pick(const std::vector<T>& v) { return v[Next() % v.size()]; }

 private:
  uint64_t state_;
};

using Words = std::vector<std::string>;
const Words kNouns = {"river", "city", "engine", "garden", "library", "market", "bridge", "forest", "harbor",
                      "school", "castle", "village", "museum", "station", "island", "valley"};
const Words kAdjectives = {"old", "quiet", "busy", "bright", "ancient", "modern", "small", "famous", "green", "cold"};
const Words kVerbs = {"visited", "built", "painted", "crossed", "found", "described", "opened", "studied"};
const Words kNames = {"Ada", "Boris", "Chen", "Dalia", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun", "Lena", "Mateo"};
const Words kCountries = {"Norway", "Chile", "Kenya", "Japan", "Peru", "Portugal", "Canada", "Vietnam", "Egypt"};
const Words kTopics = {"graph search", "protein folding", "sparse attention", "crop rotation", "tidal energy",
                       "error correction", "language models", "soil chemistry", "bird migration"};
const Words kProducts = {"bicycles", "coffee beans", "garden tools", "used books", "hiking boots", "tea sets"};

std::string Sentence(Rng& r) {
  return "The " + r.Pick(kAdjectives) + " " + r.Pick(kNouns) + " was " + r.Pick(kVerbs) + " by " + r.Pick(kNames) +
         " in " + std::to_string(r.Int(1820, 2023)) + ".";
}

std::string Paragraph(Rng& r, int sentences) {
  std::string out;
  for (int i = 0; i < sentences; ++i) out += (i ? " " : "") + Sentence(r);
  return out;
}

std::string Arithmetic(Rng& r) {
  const int64_t a = r.Int(2, 99), b = r.Int(2, 99);
  switch (r.Int(0, 2)) {
    case 0: return std::to_string(a) + " + " + std::to_string(b) + " = " + std::to_string(a + b);
    case 1: return std::to_string(a + b) + " - " + std::to_string(b) + " = " + std::to_string(a);
    default: return std::to_string(a) + " * " + std::to_string(b % 12 + 1) + " = " + std::to_string(a * (b % 12 + 1));
  }
}

std::string Generate(const std::string& subset, Rng& r) {
  std::string t;
  const int n = static_cast<int>(r.Int(3, 8));
  if (subset == "dolma_v1_6_cc") {
    t = "Welcome to " + r.Pick(kNames) + "'s " + r.Pick(kProducts) + " shop in " + r.Pick(kCountries) + "!\n";
    for (int i = 0; i < n; ++i) t += "We sell " + r.Pick(kAdjectives) + " " + r.Pick(kProducts) + " for $" +
                                     std::to_string(r.Int(5, 500)) + ". " + Sentence(r) + "\n";
    t += "Contact us: shop" + std::to_string(r.Int(1, 999)) + "@example.com";
  } else if (subset == "dolma_v1_6_refined_web" || subset == "dolma_v1_6_c4") {
    t = "The " + r.Pick(kNouns) + " of " + r.Pick(kCountries) + "\n\n" + Paragraph(r, n);
  } else if (subset == "dolma_v1_6_starcoder") {
    for (int i = 0; i < n; ++i) {
      const int64_t k = r.Int(1, 9);
      const std::string op = r.Pick(Words{"add", "mul", "sub"});
      const std::string sym = op == "add" ? "+" : op == "mul" ? "*" : "-";
      t += "def " + op + "_" + std::to_string(k) + "(x):\n    \"\"\"Return x " + sym + " " + std::to_string(k) +
           ".\"\"\"\n    return x " + sym + " " + std::to_string(k) + "\n\n";
    }
  } else if (subset == "dolma_v1_6_reddit") {
    t = "r/" + r.Pick(kNouns) + "s: Has anyone " + r.Pick(kVerbs) + " the " + r.Pick(kNouns) + " near " +
        r.Pick(kCountries) + "?\n";
    for (int i = 0; i < n; ++i) t += "> " + r.Pick(kNames) + ": " + r.Pick(Words{"Yes, ", "No, ", "Honestly, ", "lol "}) +
                                     Sentence(r) + "\n";
  } else if (subset == "dolma_v1_6_pes2o") {
    const std::string topic = r.Pick(kTopics);
    t = "Abstract. We study " + topic + " with a " + r.Pick(kAdjectives) + " method. Our experiments on " +
        std::to_string(r.Int(3, 40)) + " datasets show an improvement of " + std::to_string(r.Int(1, 30)) +
        "% over the baseline.\n1. Introduction\n" + Paragraph(r, n) + "\nKeywords: " + topic + ", " + r.Pick(kTopics);
  } else if (subset == "dolma_v1_6_redpajama") {
    t = Paragraph(r, n) + "\n" + r.Pick(kNames) + " said: \"" + Sentence(r) + "\"";
  } else if (subset == "dolma_v1_6_flan") {
    for (int i = 0; i < n; ++i) {
      const int64_t a = r.Int(1, 50), b = r.Int(1, 50);
      t += "Question: What is " + std::to_string(a) + " plus " + std::to_string(b) + "?\nAnswer: " +
           std::to_string(a + b) + "\n\n";
    }
  } else if (subset == "dolma_v1_6_openwebmath") {
    t = "Worked example " + std::to_string(r.Int(1, 500)) + ".\n";
    for (int i = 0; i < n; ++i) t += "Compute " + Arithmetic(r) + ".\n";
  } else if (subset == "dolma_v1_6_proof_pile_2") {
    const int64_t k = r.Int(0, 9);
    t = "Theorem " + std::to_string(r.Int(1, 99)) + ". For every natural number n, n + " + std::to_string(k) +
        " >= n.\nProof. By induction on n. For n = 0 we have " + std::to_string(k) + " >= 0. If n + " +
        std::to_string(k) + " >= n, then (n + 1) + " + std::to_string(k) + " >= n + 1. \u220e";
  } else if (subset == "dolma_v1_6_gutenberg") {
    t = "CHAPTER " + std::to_string(r.Int(1, 30)) + "\n\n" + r.Pick(kNames) + " walked to the " + r.Pick(kAdjectives) +
        " " + r.Pick(kNouns) + " \u2014 it was late. " + Paragraph(r, n);
  } else if (subset == "dolma_v1_6_metawika") {
    t = "title: " + r.Pick(kNames) + " " + r.Pick(kNouns) + "\ncategory: " + r.Pick(kCountries) +
        "\nlinks: " + std::to_string(r.Int(0, 300)) + "\nlanguage: en";
  } else {  // dolma_v1_6_wikimedia
    const std::string name = r.Pick(kNames) + " " + r.Pick(kNouns);
    t = name + " is a " + r.Pick(kAdjectives) + " " + r.Pick(kNouns) + " in " + r.Pick(kCountries) +
        ". It was founded in " + std::to_string(r.Int(1200, 1990)) + ". " + Paragraph(r, n / 2 + 1) +
        " The caf\u00e9 near " + name + " is well known.";
  }
  return t;
}

// Dolma's own short source names.
std::string DolmaSourceName(const std::string& subset) { return subset.substr(std::string("dolma_v1_6_").size()); }

}  // namespace

SynthReport SynthesizeDolma(const std::string& out_dir, int64_t docs_per_source, uint64_t seed,
                            const std::function<void(int64_t done, int64_t total)>& progress) {
  namespace fs = std::filesystem;
  constexpr int64_t kDocsPerFile = 20000;
  SynthReport report;
  const auto& subsets = config::DolmaSubsets();
  const int64_t total = docs_per_source * static_cast<int64_t>(subsets.size());
  int64_t done = 0;
  for (size_t s = 0; s < subsets.size(); ++s) {
    const std::string& subset = subsets[s];
    const fs::path dir = fs::path(out_dir) / subset;
    fs::create_directories(dir);
    Rng rng(seed * 0x100000001B3ull + s + 1);
    for (int64_t first = 0, part = 0; first < docs_per_source; first += kDocsPerFile, ++part) {
      char name[32];
      std::snprintf(name, sizeof name, "part-%04lld.json.gz", static_cast<long long>(part));
      const fs::path path = dir / name;
      const fs::path tmp = path.string() + ".tmp";
      gzFile gz = gzopen(tmp.c_str(), "wb6");
      if (gz == nullptr) throw std::runtime_error("cannot write " + tmp.string());
      const int64_t last = std::min(docs_per_source, first + kDocsPerFile);
      for (int64_t i = first; i < last; ++i) {
        const nlohmann::json doc = {
            {"id", subset + "-" + std::to_string(seed) + "-" + std::to_string(i)},
            {"text", Generate(subset, rng)},
            {"source", DolmaSourceName(subset)},
            {"added", "2023-08-18T00:00:00.000Z"},
            {"created", std::to_string(2000 + rng.Int(0, 23)) + "-01-01T00:00:00.000Z"},
            {"metadata", {{"synthetic", true}, {"generator", "dsv3ctl data synth"}, {"seed", seed}}},
        };
        const std::string line = doc.dump() + "\n";
        if (gzwrite(gz, line.data(), static_cast<unsigned>(line.size())) != static_cast<int>(line.size())) {
          gzclose(gz);
          throw std::runtime_error("cannot write " + tmp.string());
        }
        report.bytes += static_cast<int64_t>(line.size());
        ++report.documents;
        if (progress && (++done % 1000 == 0 || done == total)) progress(done, total);
      }
      if (gzclose(gz) != Z_OK) throw std::runtime_error("cannot finish " + tmp.string());
      fs::rename(tmp, path);
      report.files.push_back(path.string());
    }
  }
  return report;
}

}  // namespace dsv3::data
