#include "http/http_request.h"

#include <boost/asio/buffer.hpp>

namespace dsv3::server {

namespace http = boost::beast::http;

void LimitParser(RequestParser& parser, const HttpLimits& limits) {
  parser.header_limit(limits.header_bytes);
  parser.body_limit(limits.body_bytes);
}

int RefusalStatus(const boost::beast::error_code& ec) {
  if (!ec) return 0;
  if (ec == http::error::header_limit || ec == http::error::body_limit) return 431;
  return 400;
}

int RefusalStatus(const RequestParser::value_type& request) {
  return request.method() == http::verb::get || request.method() == http::verb::head ? 0 : 405;
}

int ParseOneRequest(std::string_view bytes, const HttpLimits& limits, std::string* target) {
  RequestParser parser;
  LimitParser(parser, limits);
  parser.eager(true);
  boost::beast::error_code ec;
  size_t used = 0;
  while (used < bytes.size() && !parser.is_done()) {
    const size_t n = parser.put(boost::asio::buffer(bytes.data() + used, bytes.size() - used), ec);
    if (ec == http::error::need_more) return -1;
    if (ec) return RefusalStatus(ec);
    if (n == 0) return -1;
    used += n;
  }
  if (!parser.is_done()) return -1;
  const int refusal = RefusalStatus(parser.get());
  if (refusal == 0 && target != nullptr) *target = std::string(parser.get().target());
  return refusal;
}

}  // namespace dsv3::server
