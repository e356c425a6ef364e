// libFuzzer target: any bytes a client sends to dsv3d's HTTP endpoint are parsed under the
// endpoint's limits into a request to route, a refusal (400, 405, 413, 431) or "need more",
// never a crash, hang or sanitizer report; a request routed has a target within the limit.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "http/http_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  dsv3::server::HttpLimits limits;
  dsv3::server::HttpRequest request;
  const int status = dsv3::server::ParseOneRequest(bytes, limits, &request);
  if (status != 0 && status != -1 && status != 400 && status != 405 && status != 413 && status != 431) {
    __builtin_trap();
  }
  if (status == 0 && request.target.size() > limits.header_bytes) __builtin_trap();
  if (status == 0 && request.body.size() > limits.body_bytes) __builtin_trap();
  // A request cut anywhere is incomplete or refused, never routed past what was sent.
  dsv3::server::HttpRequest cut_request;
  const int cut = dsv3::server::ParseOneRequest(bytes.substr(0, size / 2), limits, &cut_request);
  if (cut == 0 && cut_request.target.size() + cut_request.body.size() > size / 2) __builtin_trap();
  return 0;
}
