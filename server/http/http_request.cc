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
  if (ec == http::error::header_limit) return 431;
  if (ec == http::error::body_limit) return 413;
  return 400;
}

int RefusalStatus(const RequestParser::value_type& request) {
  const auto m = request.method();
  return m == http::verb::get || m == http::verb::head || m == http::verb::post ? 0 : 405;
}

HttpRequest ToHttpRequest(const RequestParser::value_type& request) {
  HttpRequest r;
  r.method = std::string(request.method_string());
  r.target = std::string(request.target());
  const auto field = [&](auto name) {
    auto it = request.find(name);
    return it == request.end() ? std::string() : std::string(it->value());
  };
  r.authorization = field(http::field::authorization);
  r.cookie = field(http::field::cookie);
  r.content_type = field(http::field::content_type);
  r.csrf = field("X-Dsv3-Request");
  r.body = request.body();
  return r;
}

int ParseOneRequest(std::string_view bytes, const HttpLimits& limits, HttpRequest* request) {
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
  if (refusal == 0 && request != nullptr) *request = ToHttpRequest(parser.get());
  return refusal;
}

}  // namespace dsv3::server
