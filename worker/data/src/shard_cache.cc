#include "dsv3/data/shard_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

namespace dsv3::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct InputFile {
  size_t source = 0;  // index into the combined source list
  std::string path;
  int64_t size = 0, mtime_ns = 0;
  fs::path base;  // cache path without extension
};

int DtypeBytes(const Tokenizer& t) { return t.vocab_size() <= 65536 ? 2 : 4; }

fs::path SourceDir(const config::Config& cfg, const Tokenizer& t, const config::DataSource& s) {
  return fs::path(cfg.data.cache_dir) / t.Fingerprint() / s.subset;
}

bool Stat(const std::string& path, int64_t& size, int64_t& mtime_ns) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return false;
  size = st.st_size;
  mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return true;
}

std::string FileKey(const std::string& path, int64_t size, int64_t mtime_ns) {
  std::error_code ec;
  const std::string absolute = fs::absolute(path, ec).lexically_normal().string();
  return Fnv1aHex(absolute + '\0' + std::to_string(size) + '\0' + std::to_string(mtime_ns));
}

// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the folder.
void WriteAtomically(const fs::path& path, const void* data, size_t bytes) {
  // Unique per process and call: two jobs (or ranks) may prepare the same cache at once, and
  // a shared temporary name would let one truncate or rename away the other's file.
  static std::atomic<uint64_t> counter{0};
  const fs::path tmp = path.string() + ".tmp." + std::to_string(getpid()) + "." + std::to_string(counter++);
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write " + tmp.string() + ": " + std::strerror(errno));
  const char* p = static_cast<const char*>(data);
  size_t left = bytes;
  while (left > 0) {
    const ssize_t n = write(fd, p, left);
    if (n < 0) {
      const int err = errno;
      close(fd);
      throw std::runtime_error("cannot write " + tmp.string() + ": " + std::strerror(err));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (fsync(fd) != 0 || close(fd) != 0) throw std::runtime_error("cannot flush " + tmp.string());
  fs::rename(tmp, path);
  const int dir = open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    fsync(dir);
    close(dir);
  }
}

// The meta record is valid when it names this input exactly and its files have the sizes
// it records.
bool CachedShardValid(const InputFile& in, const Tokenizer& t) {
  std::ifstream meta_in(in.base.string() + ".meta.json");
  if (!meta_in) return false;
  const json meta = json::parse(meta_in, nullptr, false);
  if (meta.is_discarded() || !meta.is_object()) return false;
  try {
    if (meta.at("source_file").get<std::string>() != in.path || meta.at("file_size").get<int64_t>() != in.size ||
        meta.at("mtime_ns").get<int64_t>() != in.mtime_ns || meta.at("tokenizer").get<std::string>() != t.Fingerprint()) {
      return false;
    }
    std::error_code ec;
    const auto tokens = meta.at("tokens").get<int64_t>(), documents = meta.at("documents").get<int64_t>();
    const auto dtype = meta.at("dtype_bytes").get<int64_t>();
    return static_cast<int64_t>(fs::file_size(in.base.string() + ".tokens", ec)) == tokens * dtype && !ec &&
           static_cast<int64_t>(fs::file_size(in.base.string() + ".docs", ec)) == documents * 16 && !ec;
  } catch (const json::exception&) {
    return false;
  }
}

struct FileResult {
  int64_t documents = 0, tokens = 0, bytes = 0;
  std::vector<ReadIssue> issues;
};

FileResult TokenizeFile(const InputFile& in, const Tokenizer& t) {
  FileResult result;
  const int dtype = DtypeBytes(t);
  std::vector<uint16_t> tokens16;
  std::vector<uint32_t> tokens32;
  std::vector<uint64_t> docs;  // (offset, id hash) pairs
  int64_t offset = 0;
  const ReadStats stats = ReadDolmaFile(in.path, [&](Document&& doc) {
    std::vector<int32_t> ids = t.Encode(doc.text);
    ids.push_back(t.eos_id());
    // The split key: the document id, or its place in the file when it has none.
    const std::string key = doc.id.empty() ? in.path + ":" + std::to_string(doc.line) : doc.id;
    docs.push_back(static_cast<uint64_t>(offset));
    docs.push_back(Fnv1a(key));
    if (dtype == 2) {
      const size_t old = tokens16.size();
      tokens16.resize(old + ids.size());
      for (size_t i = 0; i < ids.size(); ++i) tokens16[old + i] = static_cast<uint16_t>(ids[i]);
    } else {
      tokens32.insert(tokens32.end(), ids.begin(), ids.end());
    }
    offset += static_cast<int64_t>(ids.size());
  });
  result.documents = stats.documents;
  result.tokens = offset;
  result.bytes = stats.bytes;
  result.issues = stats.issues;
  fs::create_directories(in.base.parent_path());
  if (dtype == 2) WriteAtomically(in.base.string() + ".tokens", tokens16.data(), tokens16.size() * 2);
  else WriteAtomically(in.base.string() + ".tokens", tokens32.data(), tokens32.size() * 4);
  WriteAtomically(in.base.string() + ".docs", docs.data(), docs.size() * 8);
  json issues = json::array();
  for (const auto& issue : stats.issues) issues.push_back(issue.ToString());
  const json meta = {{"source_file", in.path}, {"file_size", in.size},     {"mtime_ns", in.mtime_ns},
                     {"tokenizer", t.Fingerprint()}, {"dtype_bytes", dtype}, {"documents", stats.documents},
                     {"tokens", offset},            {"bytes", stats.bytes}, {"issues", issues}};
  const std::string text = meta.dump(2);
  WriteAtomically(in.base.string() + ".meta.json", text.data(), text.size());  // the commit
  return result;
}

// Every source of the config with its position for error paths.
std::vector<std::pair<const config::DataSource*, std::string>> AllSources(const config::Config& cfg) {
  std::vector<std::pair<const config::DataSource*, std::string>> out;
  for (size_t i = 0; i < cfg.data.sources.size(); ++i)
    out.push_back({&cfg.data.sources[i], "/data/sources/" + std::to_string(i)});
  for (size_t i = 0; i < cfg.validation.sources.size(); ++i)
    out.push_back({&cfg.validation.sources[i], "/validation/sources/" + std::to_string(i)});
  return out;
}

std::vector<InputFile> ListInputs(const config::Config& cfg, const Tokenizer& t, std::vector<std::string>& errors) {
  std::vector<InputFile> inputs;
  const auto sources = AllSources(cfg);
  for (size_t s = 0; s < sources.size(); ++s) {
    const auto& [source, path] = sources[s];
    std::vector<std::string> unmatched;
    const std::vector<std::string> files = ExpandSourceFiles(*source, &unmatched);
    if (files.empty()) {
      std::string patterns;
      for (const auto& p : source->paths) patterns += (patterns.empty() ? "" : ", ") + p;
      errors.push_back(path + "/paths: source \"" + source->name + "\" has no files (patterns: " +
                       (patterns.empty() ? "none" : patterns) + ")");
      continue;
    }
    for (const auto& file : files) {
      InputFile in;
      in.source = s;
      in.path = file;
      if (!Stat(file, in.size, in.mtime_ns)) {
        errors.push_back(path + "/paths: \"" + file + "\" cannot be read");
        continue;
      }
      in.base = SourceDir(cfg, t, *source) / FileKey(file, in.size, in.mtime_ns);
      inputs.push_back(std::move(in));
    }
  }
  return inputs;
}

}  // namespace

PrepareReport PrepareCache(const config::Config& cfg, const Tokenizer& tokenizer, int num_workers,
                           const std::function<void(const PrepareProgress&)>& progress) {
  const auto start = std::chrono::steady_clock::now();
  PrepareReport report;
  const std::vector<InputFile> inputs = ListInputs(cfg, tokenizer, report.errors);
  if (!report.ok()) return report;
  report.files_total = static_cast<int64_t>(inputs.size());
  std::vector<const InputFile*> todo;
  for (const auto& in : inputs) {
    if (CachedShardValid(in, tokenizer)) ++report.files_cached;
    else todo.push_back(&in);
  }
  std::atomic<size_t> next{0};
  std::mutex mu;
  PrepareProgress state;
  state.files_total = static_cast<int64_t>(todo.size());
  const auto work = [&] {
    for (size_t i = next++; i < todo.size(); i = next++) {
      FileResult r;
      std::string error;
      try {
        r = TokenizeFile(*todo[i], tokenizer);
      } catch (const std::exception& e) {
        error = e.what();
      }
      std::lock_guard<std::mutex> lock(mu);
      if (!error.empty()) {
        report.errors.push_back(todo[i]->path + ": " + error);
        continue;
      }
      ++report.files_prepared;
      report.documents += r.documents;
      report.tokens += r.tokens;
      report.bytes += r.bytes;
      report.issues.insert(report.issues.end(), r.issues.begin(), r.issues.end());
      state.files_done = report.files_prepared;
      state.documents = report.documents;
      state.tokens = report.tokens;
      state.bytes = report.bytes;
      state.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (progress) progress(state);
    }
  };
  std::vector<std::thread> workers;
  const int n = std::max(1, std::min<int>(num_workers, static_cast<int>(todo.size())));
  for (int i = 1; i < n; ++i) workers.emplace_back(work);
  work();
  for (auto& w : workers) w.join();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

MappedTokens::MappedTokens(const std::string& path, int dtype_bytes, int64_t tokens)
    : bytes_(static_cast<size_t>(tokens) * dtype_bytes), dtype_bytes_(dtype_bytes), tokens_(tokens) {
  if (bytes_ == 0) return;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  data_ = mmap(nullptr, bytes_, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (data_ == MAP_FAILED) {
    data_ = nullptr;
    throw std::runtime_error("cannot map " + path + ": " + std::strerror(errno));
  }
}

MappedTokens::~MappedTokens() {
  if (data_ != nullptr) munmap(data_, bytes_);
}

void MappedTokens::Copy(int64_t begin, int64_t count, int32_t* out) const {
  if (dtype_bytes_ == 2) {
    const uint16_t* p = static_cast<const uint16_t*>(data_) + begin;
    for (int64_t i = 0; i < count; ++i) out[i] = p[i];
  } else {
    std::memcpy(out, static_cast<const uint32_t*>(data_) + begin, static_cast<size_t>(count) * 4);
  }
}

bool InValidationSplit(uint64_t id_hash, double fraction) {
  // FNV-1a of similar ids ("doc-1", "doc-2", ...) differ in few bits: a 64-bit finalizer
  // (splitmix64's) spreads them before the top 53 bits become a uniform number in [0, 1).
  uint64_t z = id_hash;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53 < fraction;
}

std::vector<SourceIndex> OpenCache(const config::Config& cfg, const std::vector<config::DataSource>& sources,
                                   const Tokenizer& tokenizer) {
  std::vector<SourceIndex> out;
  for (const auto& source : sources) {
    SourceIndex index;
    index.name = source.name;
    index.subset = source.subset;
    index.weight = source.weight;
    for (const auto& file : ExpandSourceFiles(source, nullptr)) {
      InputFile in;
      in.path = file;
      if (!Stat(file, in.size, in.mtime_ns)) throw std::runtime_error("source " + source.name + ": cannot read " + file);
      in.base = SourceDir(cfg, tokenizer, source) / FileKey(file, in.size, in.mtime_ns);
      if (!CachedShardValid(in, tokenizer)) {
        throw std::runtime_error("source " + source.name + ": " + file +
                                 " is not in the token cache (or changed since); run `dsv3ctl data prepare`");
      }
      std::ifstream meta_in(in.base.string() + ".meta.json");
      const json meta = json::parse(meta_in);
      const int64_t tokens = meta["tokens"].get<int64_t>(), documents = meta["documents"].get<int64_t>();
      const int shard = static_cast<int>(index.shards.size());
      index.shards.push_back(std::make_shared<MappedTokens>(in.base.string() + ".tokens",
                                                            meta["dtype_bytes"].get<int>(), tokens));
      index.files.push_back(file);
      std::vector<uint64_t> docs(static_cast<size_t>(documents) * 2);
      std::ifstream docs_in(in.base.string() + ".docs", std::ios::binary);
      docs_in.read(reinterpret_cast<char*>(docs.data()), static_cast<std::streamsize>(docs.size() * 8));
      if (!docs_in) throw std::runtime_error("source " + source.name + ": damaged document index for " + file);
      for (int64_t d = 0; d < documents; ++d) {
        DocumentSpan span;
        span.shard = shard;
        span.begin = static_cast<int64_t>(docs[2 * d]);
        const int64_t end = d + 1 < documents ? static_cast<int64_t>(docs[2 * d + 2]) : tokens;
        span.length = end - span.begin;
        span.id_hash = docs[2 * d + 1];
        index.documents.push_back(span);
      }
      index.tokens += tokens;
    }
    out.push_back(std::move(index));
  }
  return out;
}

}  // namespace dsv3::data
