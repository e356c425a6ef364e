// libFuzzer target: the Dolma line scanner must agree with nlohmann_json on every input --
// the same verdict (valid or not), and for valid objects the same "text" and string "id".
#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "json_line.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The reader hands over lines up to a NUL byte (gzgets + strlen), and nlohmann_json also
  // takes NUL as the end of input: compare on that prefix.
  std::string_view line(reinterpret_cast<const char*>(data), size);
  line = line.substr(0, line.find('\0'));
  // The scanner caps nesting at 512 levels; nlohmann recurses without a cap.
  int depth = 0, max_depth = 0;
  for (char c : line) {
    if (c == '[' || c == '{') max_depth = std::max(max_depth, ++depth);
    if (c == ']' || c == '}') --depth;
  }
  if (max_depth > 500) return 0;
  dsv3::data::internal::DolmaFields fields;
  const bool ours = dsv3::data::internal::ScanDolmaLine(line, fields).empty();
  nlohmann::json j;
  bool theirs = true;
  try {
    j = nlohmann::json::parse(line.begin(), line.end());
  } catch (const nlohmann::json::parse_error&) {
    theirs = false;
  } catch (const nlohmann::json::out_of_range&) {
    return 0;  // a number beyond double (1e999): valid JSON text that nlohmann refuses to hold
  }
  if (ours != theirs) __builtin_trap();
  if (!ours) return 0;
  if (fields.is_object != j.is_object()) __builtin_trap();
  if (!j.is_object()) return 0;
  const auto text = j.find("text");
  if (fields.has_text != (text != j.end())) __builtin_trap();
  if (text != j.end()) {
    if (fields.text_is_string != text->is_string()) __builtin_trap();
    if (text->is_string() && fields.text != text->get<std::string>()) __builtin_trap();
  }
  const auto id = j.find("id");
  if (id != j.end() && id->is_string() && fields.id != id->get<std::string>()) __builtin_trap();
  return 0;
}
