// The token-shard cache: every input file of every source, tokenized once into
// memory-mappable shards under data.cache_dir:
//
//   <cache_dir>/<tokenizer fingerprint>/<subset>/<file key>.tokens   uint16 or uint32 ids
//                                                 <file key>.docs     per document: token
//                                                                     offset, id hash (2 x u64)
//                                                 <file key>.meta.json  the commit record
//
// The file key hashes the input's absolute path, size and modification time, and the
// directory names the tokenizer, so a second run finds everything done, and a changed file
// or tokenizer is tokenized again. Data files are written under temporary names, fsynced
// and renamed, and the meta record is written last the same way: a shard without a meta
// record that matches its files (an interrupted run) is never trusted.
//
// Every document ends with the tokenizer's EOS. The validation split is decided when
// loading, from the document id's hash, so changing validation.split_fraction needs no
// re-tokenization.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dsv3/common/config.h"
#include "dsv3/data/dolma_reader.h"
#include "dsv3/data/tokenizer.h"

namespace dsv3::data {

struct PrepareProgress {
  int64_t files_done = 0, files_total = 0;
  int64_t documents = 0, tokens = 0, bytes = 0;  // of the files tokenized in this run
  double seconds = 0;
};

struct PrepareReport {
  int64_t files_total = 0, files_prepared = 0, files_cached = 0;
  int64_t documents = 0, tokens = 0, bytes = 0;  // tokenized in this run
  double seconds = 0;
  std::vector<ReadIssue> issues;   // malformed lines, truncated files
  std::vector<std::string> errors;  // "/data/sources/3/paths: ..." -- nothing usable
  bool ok() const { return errors.empty(); }
};

// Tokenizes every file of data.sources and validation.sources that is not cached yet, with
// `num_workers` threads (one file per worker at a time). `progress` (optional) is called
// from worker threads, serialized, after each file. Blocks until done.
PrepareReport PrepareCache(const config::Config& cfg, const Tokenizer& tokenizer, int num_workers,
                           const std::function<void(const PrepareProgress&)>& progress = {});

// A read-only memory map of one shard's tokens.
class MappedTokens {
 public:
  MappedTokens(const std::string& path, int dtype_bytes, int64_t tokens);
  ~MappedTokens();
  MappedTokens(const MappedTokens&) = delete;
  MappedTokens& operator=(const MappedTokens&) = delete;
  int32_t operator[](int64_t i) const {
    return dtype_bytes_ == 2 ? static_cast<const uint16_t*>(data_)[i]
                             : static_cast<int32_t>(static_cast<const uint32_t*>(data_)[i]);
  }
  // Copies tokens [begin, begin + count) into out.
  void Copy(int64_t begin, int64_t count, int32_t* out) const;
  int64_t size() const { return tokens_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  int dtype_bytes_;
  int64_t tokens_;
};

struct DocumentSpan {
  int32_t shard = 0;  // index into SourceIndex::shards
  int64_t begin = 0;  // first token in the shard
  int64_t length = 0;  // tokens, EOS included
  uint64_t id_hash = 0;
};

// One source's cached shards, in file order, with its documents.
struct SourceIndex {
  std::string name, subset;
  double weight = 0;
  std::vector<std::shared_ptr<MappedTokens>> shards;
  std::vector<std::string> files;
  std::vector<DocumentSpan> documents;  // file order, document order within a file
  int64_t tokens = 0;
};

// True when a document belongs to the held-out validation split (deterministic per id).
bool InValidationSplit(uint64_t id_hash, double fraction);

// Opens the cache for `sources` (data.sources or validation.sources). Throws
// std::runtime_error naming the source and file when a shard is missing or damaged; run
// PrepareCache first.
std::vector<SourceIndex> OpenCache(const config::Config& cfg, const std::vector<config::DataSource>& sources,
                                   const Tokenizer& tokenizer);

}  // namespace dsv3::data
