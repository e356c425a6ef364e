// Helpers for data pipeline tests: writing Dolma files and configs that point at them.
#pragma once

#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"

namespace dsv3::test {

// Writes `content` to `path`, gzip-compressed when the name ends in .gz.
inline void WriteFile(const std::filesystem::path& path, const std::string& content) {
  std::filesystem::create_directories(path.parent_path());
  if (path.extension() == ".gz") {
    gzFile gz = gzopen(path.c_str(), "wb");
    ASSERT_NE(gz, nullptr);
    ASSERT_EQ(gzwrite(gz, content.data(), static_cast<unsigned>(content.size())), static_cast<int>(content.size()));
    gzclose(gz);
  } else {
    std::ofstream(path, std::ios::binary) << content;
  }
}

inline std::string DolmaLine(const std::string& id, const std::string& text) {
  return nlohmann::json{{"id", id}, {"text", text}, {"source", "test"}}.dump() + "\n";
}

// `docs` documents "<prefix> document <i> ..." of varying length, one file.
inline std::string DolmaDocs(const std::string& prefix, int docs, int first = 0) {
  std::string out;
  for (int i = first; i < first + docs; ++i) {
    std::string text = prefix + " document " + std::to_string(i) + ":";
    for (int w = 0; w < 5 + i % 17; ++w) text += " " + prefix + std::to_string(w);
    out += DolmaLine(prefix + "-" + std::to_string(i), text);
  }
  return out;
}

// A config with the given sources ({name, weight, glob}), byte tokenizer, cache under `dir`.
inline config::Config DataConfig(const std::filesystem::path& dir,
                                 const std::vector<std::tuple<std::string, double, std::string>>& sources,
                                 const nlohmann::json& overrides = nlohmann::json::object()) {
  const std::vector<std::string>& subsets = config::DolmaSubsets();
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < sources.size(); ++i) {
    const auto& [name, weight, glob] = sources[i];
    list.push_back({{"name", name}, {"subset", subsets[i % subsets.size()]}, {"weight", weight}, {"paths", {glob}}});
  }
  nlohmann::json cfg = {
      {"model", {{"vocab_size", 272}}},
      {"training", {{"seq_length", 16}, {"global_batch_size", 8}, {"micro_batch_size", 8}, {"train_steps", 10}}},
      {"data", {{"cache_dir", (dir / "cache").string()}, {"sources", list},
                {"preprocessing", {{"num_workers", 2}, {"shuffle", true}, {"shuffle_seed", 7}}}}},
      {"validation", {{"split_fraction", 0.0}}},
  };
  cfg.merge_patch(overrides);
  const config::LoadResult r = config::LoadConfigText(cfg.dump());
  EXPECT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].ToString());
  return r.config;
}

}  // namespace dsv3::test
