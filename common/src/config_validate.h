// Internal: cross-field validation and derived values of a parsed Config.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "dsv3/common/config.h"
#include "dsv3/common/config_io.h"

namespace dsv3::config::internal {

// Checks the combinations the per-field rules cannot see, fills derived values and the
// fields left to be derived (head dims, data_parallel_size, train_steps, ...). `present`
// holds the JSON pointers given explicitly. Fields that already have an error in `errors`
// are not checked again, so one mistake yields one message.
void ValidateAndDerive(Config& config, const std::set<std::string>& present,
                       const LoadOptions& options, std::vector<Diagnostic>& errors,
                       std::vector<Diagnostic>& warnings);

}  // namespace dsv3::config::internal
