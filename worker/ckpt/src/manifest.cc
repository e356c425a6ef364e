#include "dsv3/ckpt/manifest.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "dsv3/common/checkpoint_layout.h"
#include "dsv3/common/checksum.h"

namespace dsv3::ckpt {

namespace fs = std::filesystem;
using nlohmann::json;

std::string ResolveCheckpointPath(const std::string& path_in) {
  fs::path p = path_in;
  if (p.filename() == "manifest.json") p = p.parent_path();
  if (!fs::exists(p) && p.extension() == ".pt") p.replace_extension();  // the guide's checkpoint_N.pt
  return p.string();
}

json ParseManifest(const std::string& text, const std::string& where) {
  const json manifest = json::parse(text, nullptr, false);
  if (manifest.is_discarded() || !manifest.is_object() || !manifest.contains("files") || !manifest["files"].is_object()) {
    throw std::runtime_error(where + ": manifest.json is damaged or of another format");
  }
  const json format = manifest.contains("format") ? manifest["format"] : json("");
  const std::string format_text = format.is_string() ? format.get<std::string>() : format.dump();
  if (format_text != kCheckpointFormat) {
    throw std::runtime_error(where + ": format \"" + format_text + "\" is not this dsv3's \"" + kCheckpointFormat +
                             "\" (dsv3-checkpoint/1, from before distributed training, kept a LibTorch optimizer "
                             "archive that no data-parallel layout can load); start a new run from step 0");
  }
  for (const auto& [name, info] : manifest["files"].items()) {
    // A plain file of the checkpoint folder: a name must not reach outside it.
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos) {
      throw std::runtime_error(where + ": manifest.json lists \"" + name + "\", which is not a file name");
    }
    if (!info.is_object() || !info.contains("bytes") || !info["bytes"].is_number_unsigned() ||
        !info.contains("crc32") || !info["crc32"].is_string()) {
      throw std::runtime_error(where + ": manifest.json: " + name + " needs \"bytes\" (a size) and \"crc32\" (hex)");
    }
  }
  return manifest;
}

json VerifyCheckpoint(const std::string& path_in) {
  const fs::path path = ResolveCheckpointPath(path_in);
  const fs::path manifest_path = path / "manifest.json";
  std::ifstream in(manifest_path);
  if (!in) throw std::runtime_error("checkpoint " + path.string() + ": no manifest.json (not a checkpoint, or an incomplete one)");
  std::ostringstream text;
  text << in.rdbuf();
  const json manifest = ParseManifest(text.str(), "checkpoint " + path.string());
  for (const auto& [name, info] : manifest["files"].items()) {
    const fs::path file = path / name;
    std::error_code ec;
    const auto bytes = fs::file_size(file, ec);
    if (ec) throw std::runtime_error("checkpoint " + path.string() + ": " + name + " is missing");
    if (bytes != info["bytes"].get<uint64_t>()) {
      throw std::runtime_error("checkpoint " + path.string() + ": " + name + " has " + std::to_string(bytes) +
                               " bytes, the manifest says " + info["bytes"].dump());
    }
    const auto crc = Crc32OfFile(file.string());
    if (!crc || *crc != info["crc32"].get<std::string>()) {
      throw std::runtime_error("checkpoint " + path.string() + ": " + name + " does not match its checksum (crc32 " +
                               crc.value_or("unreadable") + ", manifest " + info["crc32"].get<std::string>() +
                               "); the checkpoint is corrupted");
    }
  }
  return manifest;
}

std::optional<int64_t> CheckpointStep(const std::string& name) {
  const std::string prefix = config::kCheckpointPrefix;
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  const std::string digits = name.substr(prefix.size());
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::stoll(digits);
}

std::optional<std::string> LatestIntactCheckpoint(const std::string& dir, std::vector<std::string>* skipped) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  std::vector<std::pair<int64_t, std::string>> found;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const auto step = CheckpointStep(e.path().filename().string());
    if (step && e.is_directory()) found.push_back({*step, e.path().string()});
  }
  std::sort(found.rbegin(), found.rend());
  for (const auto& [step, path] : found) {
    try {
      VerifyCheckpoint(path);
      return path;
    } catch (const std::exception& e) {
      if (skipped != nullptr) skipped->push_back(e.what());
    }
  }
  return std::nullopt;
}

}  // namespace dsv3::ckpt
