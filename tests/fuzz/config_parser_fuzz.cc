// libFuzzer target: any byte string given to the config loader yields a result (errors or a
// config), never a crash, hang or sanitizer report. A config that loads must also survive
// the round trip through ToJson.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/common/estimator.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  dsv3::config::LoadOptions options;
  options.base_dir = "/nonexistent-dsv3-fuzz";  // "extends" must not reach real files
  const dsv3::config::LoadResult r = dsv3::config::LoadConfigText(text, options);
  if (r.ok()) {
    const std::string once = dsv3::config::ToJsonText(r.config);
    const dsv3::config::LoadResult again = dsv3::config::LoadConfigText(once, options);
    if (!again.ok() || dsv3::config::ToJsonText(again.config) != once) __builtin_trap();
    (void)dsv3::config::EstimateConfig(r.config);
  }
  for (const auto& e : r.errors) {
    if (e.message.empty()) __builtin_trap();  // every error says something
  }
  return 0;
}
