#include "dsv3/data/dolma_reader.h"

#include <glob.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "json_line.h"

namespace dsv3::data {

std::string ReadIssue::ToString() const {
  return line > 0 ? file + ":" + std::to_string(line) + ": " + message : file + ": " + message;
}

namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzHandle = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

// Parses one line; returns an empty message on success.
std::string ParseLine(const std::string& line, Document& doc) {
  internal::DolmaFields fields;
  if (!internal::ScanDolmaLine(line, fields).empty()) return "malformed JSON";
  if (!fields.is_object) return "not a JSON object";
  if (!fields.has_text) return "no \"text\" field";
  if (!fields.text_is_string) return "\"text\" is not a string";
  doc.text = std::move(fields.text);
  doc.id = std::move(fields.id);
  return "";
}

}  // namespace

ReadStats ReadDolmaFile(const std::string& path, const std::function<void(Document&&)>& on_document) {
  ReadStats stats;
  GzHandle file(gzopen(path.c_str(), "rb"));
  if (!file) {
    stats.issues.push_back({path, 0, "cannot be opened"});
    return stats;
  }
  gzbuffer(file.get(), 1 << 17);
  std::string line;
  std::vector<char> buffer(1 << 16);
  int64_t line_number = 0;
  bool eof = false;
  while (!eof) {
    // gzgets returns at most buffer-1 bytes: long lines arrive in pieces until '\n'.
    line.clear();
    bool complete = false;
    while (!complete) {
      if (gzgets(file.get(), buffer.data(), static_cast<int>(buffer.size())) == nullptr) {
        eof = true;
        break;
      }
      const size_t n = std::strlen(buffer.data());
      line.append(buffer.data(), n);
      complete = n > 0 && buffer[n - 1] == '\n';
    }
    if (eof) {
      // Only once the data runs out does zlib's error state tell a clean end from a stream
      // cut short (Z_BUF_ERROR "unexpected end of file": a truncated download); complete
      // lines decompressed before the cut have been read already.
      int errnum = Z_OK;
      const char* error = gzerror(file.get(), &errnum);
      if (errnum != Z_OK && errnum != Z_STREAM_END) {
        stats.issues.push_back({path, line_number + 1, std::string("truncated or corrupt gzip stream (") + error +
                                                           "); the rest of the file is skipped"});
        break;
      }
      if (line.empty()) break;
    }
    ++line_number;
    stats.bytes += static_cast<int64_t>(line.size());
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) {
      ++stats.empty_lines;
      continue;
    }
    Document doc;
    doc.line = line_number;
    const std::string problem = ParseLine(line, doc);
    if (!problem.empty()) {
      stats.issues.push_back({path, line_number, problem});
      continue;
    }
    ++stats.documents;
    on_document(std::move(doc));
  }
  return stats;
}

std::vector<std::string> ExpandSourceFiles(const config::DataSource& source, std::vector<std::string>* unmatched) {
  std::vector<std::string> files;
  for (const auto& pattern : source.paths) {
    glob_t g{};
    const int rc = glob(pattern.c_str(), GLOB_NOSORT, nullptr, &g);
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
    } else if (unmatched != nullptr) {
      unmatched->push_back(pattern);
    }
    globfree(&g);
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return files;
}

}  // namespace dsv3::data
