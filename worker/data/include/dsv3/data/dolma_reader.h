// Reading Dolma v1.6 files: JSON lines {"id", "text", "source", "added", "created",
// "metadata"}, in .json.gz / .jsonl.gz / .json / .jsonl (zlib reads both compressed and
// plain files). A malformed line or a truncated gzip stream is counted and reported with its
// file and line; reading goes on with the next line or file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dsv3/common/config.h"

namespace dsv3::data {

struct Document {
  std::string id;
  std::string text;
  int64_t line = 0;  // 1-based line in its file
};

struct ReadIssue {
  std::string file;
  int64_t line = 0;  // 0: the file as a whole
  std::string message;
  std::string ToString() const;  // "file:line: message"
};

struct ReadStats {
  int64_t documents = 0;
  int64_t empty_lines = 0;
  int64_t bytes = 0;  // uncompressed bytes read
  std::vector<ReadIssue> issues;
};

// Calls on_document for every well-formed document of `path`, in file order. Blocks until
// the file is read. Never throws for bad content; a file that cannot be opened is an issue.
ReadStats ReadDolmaFile(const std::string& path, const std::function<void(Document&&)>& on_document);

// The files a source names: globs expanded, sorted, duplicates removed. Patterns that match
// nothing are listed in `unmatched`.
std::vector<std::string> ExpandSourceFiles(const config::DataSource& source, std::vector<std::string>* unmatched);

}  // namespace dsv3::data
