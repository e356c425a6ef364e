// libFuzzer target: any bytes a client sends to dsv3d's HTTP endpoint are parsed under the
// endpoint's limits into a request to route, a refusal (400, 405, 431) or "need more",
// never a crash, hang or sanitizer report; a request routed has a target within the limit.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "http/http_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  dsv3::server::HttpLimits limits;
  std::string target;
  const int status = dsv3::server::ParseOneRequest(bytes, limits, &target);
  if (status != 0 && status != -1 && status != 400 && status != 405 && status != 431) __builtin_trap();
  if (status == 0 && target.size() > limits.header_bytes) __builtin_trap();
  // A request cut anywhere is incomplete or refused, never routed past what was sent.
  std::string cut_target;
  const int cut = dsv3::server::ParseOneRequest(bytes.substr(0, size / 2), limits, &cut_target);
  if (cut == 0 && cut_target.size() > size / 2) __builtin_trap();
  return 0;
}
