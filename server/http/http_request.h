// How dsv3d's HTTP endpoint reads a request: Beast's parser with our limits. The server's
// sessions and the HTTP fuzz target (tests/fuzz/http_request_fuzz.cc) share it.
#pragma once

#include <string>
#include <string_view>

#include <boost/beast/http.hpp>

#include "http/http_types.h"

namespace dsv3::server {

using RequestParser = boost::beast::http::request_parser<boost::beast::http::string_body>;

// Applies the header and body limits to a fresh parser.
void LimitParser(RequestParser& parser, const HttpLimits& limits);

// What the endpoint answers to a request it could not or will not serve (0: serve it):
// 400 malformed, 405 a method other than GET/HEAD/POST, 413 a body over the limit, 431
// headers over the limit.
int RefusalStatus(const boost::beast::error_code& parse_error);
int RefusalStatus(const RequestParser::value_type& request);

// The fields a route sees of a request the endpoint serves.
HttpRequest ToHttpRequest(const RequestParser::value_type& request);

// Parses `bytes` as one request the way a session does; returns the status the endpoint
// would answer with before routing (0: a complete request to route, -1: incomplete).
// `request` receives a complete request.
int ParseOneRequest(std::string_view bytes, const HttpLimits& limits, HttpRequest* request);

}  // namespace dsv3::server
