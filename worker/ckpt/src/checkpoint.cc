#include "dsv3/ckpt/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "dsv3/ckpt/manifest.h"
#include "dsv3/ckpt/safetensors.h"
#include "dsv3/common/checkpoint_layout.h"
#include "dsv3/common/checksum.h"

namespace dsv3::ckpt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> Files(int world) {
  std::vector<std::string> files = {"model.safetensors", "state.safetensors", "trainer_state.json"};
  for (int r = 0; r < world; ++r) files.push_back("shard_" + std::to_string(r) + ".safetensors");
  return files;
}

void Barrier(const SaveGroup& g) {
  if (g.world > 1 && g.barrier) g.barrier();
}

void FsyncPath(const fs::path& p, bool directory) {
  const int fd = open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

void WriteText(const fs::path& path, const std::string& text) {
  {
    std::ofstream out(path, std::ios::binary);
    out << text;
    if (!out) throw std::runtime_error("cannot write " + path.string());
  }
  FsyncPath(path, false);
}

// Every rank writes its files into one temporary directory; rank 0 writes the rest, the
// manifest with every checksum, and renames it into place.
std::string WriteCheckpointFiles(const std::string& dir, const CheckpointData& d, const SaveGroup& g,
                                 const fs::path& tmp);

// The bytes of tensors a save writes (what it needs on disk, headers aside).
double TensorBytes(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  double bytes = 0;
  for (const auto& [name, t] : tensors) bytes += static_cast<double>(t.numel()) * static_cast<double>(t.element_size());
  return bytes;
}

// A failed save (a full disk, say) removes what it wrote, so the disk is not left full for
// the restart, and says how much the save needed. (Temporaries of killed saves are removed
// when the next CheckpointManager starts.)
std::string WriteCheckpoint(const std::string& dir, const CheckpointData& d, const SaveGroup& g) {
  const std::string suffix = g.world > 1 ? "dist" : std::to_string(getpid());
  const fs::path tmp = fs::path(dir) / (config::CheckpointName(d.step) + ".tmp-" + suffix);
  try {
    return WriteCheckpointFiles(dir, d, g, tmp);
  } catch (const std::exception& e) {
    std::error_code ec;
    if (g.rank == 0 || g.world == 1) {
      fs::remove_all(tmp, ec);
    } else {
      fs::remove(tmp / ("shard_" + std::to_string(g.rank) + ".safetensors"), ec);
    }
    const double mib = (TensorBytes(d.shard) + TensorBytes(d.model) + TensorBytes(d.state_tensors)) / 1048576.0;
    char need[160];
    std::snprintf(need, sizeof(need), " (this rank's part of the checkpoint of step %lld needs %.1f MiB; ",
                  static_cast<long long>(d.step), mib);
    throw std::runtime_error(std::string("saving a checkpoint in ") + dir + " failed: " + e.what() + need +
                             "its temporary folder " + tmp.filename().string() + " was removed)");
  }
}

std::string WriteCheckpointFiles(const std::string& dir, const CheckpointData& d, const SaveGroup& g,
                                 const fs::path& tmp) {
  const fs::path final_dir = fs::path(dir) / config::CheckpointName(d.step);
  if (g.rank == 0) {
    fs::remove_all(tmp);
    fs::create_directories(tmp);
  }
  Barrier(g);
  WriteSafetensors((tmp / ("shard_" + std::to_string(g.rank) + ".safetensors")).string(), d.shard, d.shard_metadata);
  if (g.rank == 0) {
    WriteSafetensors((tmp / "model.safetensors").string(), d.model, {{"format", "pt"}});
    WriteSafetensors((tmp / "state.safetensors").string(), d.state_tensors);
    WriteText(tmp / "trainer_state.json", d.trainer_state.dump(2));
  }
  Barrier(g);
  if (g.rank == 0) {
    json files = json::object();
    for (const std::string& name : Files(g.world)) {
      const auto crc = Crc32OfFile((tmp / name).string());
      if (!crc) throw std::runtime_error("cannot read back " + (tmp / name).string());
      files[name] = {{"bytes", fs::file_size(tmp / name)}, {"crc32", *crc}};
    }
    json manifest = {{"format", kCheckpointFormat},
                     {"step", d.step},
                     {"world_size", g.world},
                     {"created_unix", std::chrono::duration_cast<std::chrono::seconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count()},
                     {"val_loss", d.val_loss ? json(*d.val_loss) : json()},
                     {"files", files},
                     {"config", d.config}};
    if (!d.weights_from.empty()) manifest["weights_from"] = d.weights_from;
    WriteText(tmp / "manifest.json", manifest.dump(2));
    FsyncPath(tmp, true);
    if (fs::exists(final_dir)) fs::remove_all(final_dir);  // an older save of the same step
    fs::rename(tmp, final_dir);
    FsyncPath(dir, true);
  }
  Barrier(g);
  return final_dir.string();
}

}  // namespace

CheckpointManager::CheckpointManager(std::string dir, int64_t keep_last_n, int64_t keep_best_n, SaveGroup group)
    : dir_(std::move(dir)), keep_last_n_(keep_last_n), keep_best_n_(keep_best_n), group_(std::move(group)) {
  fs::create_directories(dir_);
  if (group_.rank != 0) return;
  for (const auto& e : fs::directory_iterator(dir_)) {
    if (e.is_directory() && e.path().filename().string().find(".tmp-") != std::string::npos) fs::remove_all(e.path());
  }
}

CheckpointManager::~CheckpointManager() {
  if (writer_.joinable()) writer_.join();
}

std::string CheckpointManager::Save(const CheckpointData& data) {
  Wait();
  const std::string path = WriteCheckpoint(dir_, data, group_);
  if (group_.rank == 0) ApplyRetention();
  return path;
}

void CheckpointManager::SaveAsync(CheckpointData data) {
  if (group_.world > 1) throw std::logic_error("SaveAsync is for one rank; a distributed save is collective");
  Wait();
  // The copy to host memory happens now, so training may change the weights right after.
  for (auto& [name, t] : data.model) t = t.detach().to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true);
  for (auto& [name, t] : data.state_tensors) t = t.detach().to(torch::kCPU, false, true);
  for (auto& [name, t] : data.shard) t = t.detach().to(torch::kCPU, false, true);
  writer_ = std::thread([this, d = std::move(data)] {
    std::string path, error;
    try {
      path = WriteCheckpoint(dir_, d, group_);
      ApplyRetention();
    } catch (const std::exception& e) {
      error = e.what();
    }
    std::lock_guard<std::mutex> lock(mu_);
    async_path_ = path;
    async_error_ = error;
  });
}

std::string CheckpointManager::Wait() {
  if (writer_.joinable()) writer_.join();
  std::lock_guard<std::mutex> lock(mu_);
  std::string path = std::move(async_path_), error = std::move(async_error_);
  async_path_.clear();
  async_error_.clear();
  if (!error.empty()) throw std::runtime_error("asynchronous checkpoint save failed: " + error);
  return path;
}

std::vector<CheckpointEntry> CheckpointManager::List() const {
  std::vector<CheckpointEntry> out;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const auto step = CheckpointStep(e.path().filename().string());
    if (!step || !e.is_directory() || !fs::exists(e.path() / "manifest.json")) continue;
    CheckpointEntry entry{e.path().string(), *step, std::nullopt};
    std::ifstream in(e.path() / "manifest.json");
    const json m = json::parse(in, nullptr, false);
    if (!m.is_discarded() && m.contains("val_loss") && m["val_loss"].is_number()) entry.val_loss = m["val_loss"].get<double>();
    out.push_back(entry);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return out;
}

void CheckpointManager::Protect(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  protected_.insert(fs::weakly_canonical(path).string());
}

void CheckpointManager::ApplyRetention() {
  const std::vector<CheckpointEntry> all = List();
  std::set<std::string> keep;
  if (keep_last_n_ <= 0) return;
  for (size_t i = all.size() > static_cast<size_t>(keep_last_n_) ? all.size() - keep_last_n_ : 0; i < all.size(); ++i)
    keep.insert(all[i].path);
  std::vector<CheckpointEntry> scored;
  for (const auto& e : all)
    if (e.val_loss) scored.push_back(e);
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) { return *a.val_loss < *b.val_loss; });
  for (size_t i = 0; i < scored.size() && i < static_cast<size_t>(keep_best_n_); ++i) keep.insert(scored[i].path);
  std::set<std::string> protect;
  {
    std::lock_guard<std::mutex> lock(mu_);
    protect = protected_;
  }
  for (const auto& e : all) {
    if (keep.count(e.path) != 0 || protect.count(fs::weakly_canonical(e.path).string()) != 0) continue;
    fs::remove_all(e.path);
  }
}

LoadedCheckpoint LoadCheckpoint(const std::string& path_in) {
  const fs::path path = ResolveCheckpointPath(path_in);
  LoadedCheckpoint out;
  out.manifest = VerifyCheckpoint(path.string());
  out.path = path.string();
  out.step = out.manifest["step"].get<int64_t>();
  out.model = ReadSafetensors((path / "model.safetensors").string()).tensors;
  out.state_tensors = ReadSafetensors((path / "state.safetensors").string()).tensors;
  out.world_size = out.manifest.value("world_size", 1);
  std::ifstream st(path / "trainer_state.json");
  out.trainer_state = json::parse(st);
  return out;
}

SafetensorsFile LoadShard(const LoadedCheckpoint& checkpoint, int rank) {
  return ReadSafetensors((fs::path(checkpoint.path) / ("shard_" + std::to_string(rank) + ".safetensors")).string());
}

}  // namespace dsv3::ckpt
