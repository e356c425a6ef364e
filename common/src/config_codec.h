// Internal: JSON <-> Config through the schema visitors (config_schema.h).
#pragma once

#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/common/config.h"
#include "dsv3/common/config_io.h"

namespace dsv3::config::internal {

// Reads `root` into `config`. Every problem (wrong type, out of range, unknown key, alias
// conflict) is appended to `errors`; a field with an error keeps its default. `present`
// receives the JSON pointer of every field the input gave explicitly.
void ReadConfig(const nlohmann::json& root, Config& config, std::vector<Diagnostic>& errors,
                std::set<std::string>& present);

// The closest candidate to `word` by edit distance, or "" when none is plausibly a typo.
std::string Suggest(const std::string& word, const std::vector<std::string>& candidates);

// Short rendering of a JSON value for messages: strings quoted, long values cut.
std::string Show(const nlohmann::json& value);

}  // namespace dsv3::config::internal
