// How dsv3d's HTTP endpoint reads a request: Beast's parser with our limits. The server's
// sessions and the HTTP fuzz target (tests/fuzz/http_request_fuzz.cc) share it.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include <boost/beast/http.hpp>

namespace dsv3::server {

struct HttpLimits {
  unsigned header_bytes = 8 * 1024;  // request line and headers together
  unsigned body_bytes = 0;           // GET and HEAD only: no body
  std::chrono::milliseconds request_timeout{10000};  // the whole request (slowloris)
  int max_connections = 64;          // open at once; more are closed at accept
};

using RequestParser = boost::beast::http::request_parser<boost::beast::http::empty_body>;

// Applies the header and body limits to a fresh parser.
void LimitParser(RequestParser& parser, const HttpLimits& limits);

// What the endpoint answers to a request it could not or will not serve (0: serve it).
int RefusalStatus(const boost::beast::error_code& parse_error);
int RefusalStatus(const RequestParser::value_type& request);

// Parses `bytes` as one request the way a session does; returns the status the endpoint
// would answer with before routing (0: a complete GET/HEAD to route, -1: incomplete).
// `target` receives the request target of a complete request.
int ParseOneRequest(std::string_view bytes, const HttpLimits& limits, std::string* target);

}  // namespace dsv3::server
