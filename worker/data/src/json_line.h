// A single-pass scanner for one Dolma JSON line: validates the whole line as JSON (RFC 8259:
// one value, nothing after it but whitespace) and extracts the top-level "text" and "id"
// strings, without building a document tree. Several times faster than a general parser on
// Dolma's long "text" values; tests check it against nlohmann_json on tricky and random
// lines.
#pragma once

#include <string>
#include <string_view>

namespace dsv3::data::internal {

struct DolmaFields {
  bool has_text = false;
  bool text_is_string = false;
  std::string text;
  std::string id;  // a string id as is; any other JSON value as its raw text
  bool is_object = false;
};

// Returns an empty string on success, else why the line is not valid JSON ("malformed JSON").
std::string ScanDolmaLine(std::string_view line, DolmaFields& out);

}  // namespace dsv3::data::internal
