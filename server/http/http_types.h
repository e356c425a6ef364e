// What dsv3d's HTTP endpoint hands its routes and takes back from them, without Beast: the
// web room (dashboard and /api/v1) and the metrics page see only these.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace dsv3::server {

struct HttpLimits {
  unsigned header_bytes = 8 * 1024;  // request line and headers together
  unsigned body_bytes = 4 * 1024;    // POST bodies (a login, a cancel); GET and HEAD send none
  std::chrono::milliseconds request_timeout{10000};  // the whole request (slowloris)
  int max_connections = 64;          // open at once; more are closed at accept
};

// One parsed request: GET, HEAD or POST (the endpoint refuses every other method itself).
struct HttpRequest {
  std::string method;  // "GET", "HEAD" or "POST"
  std::string target;  // the path with any query string
  std::string authorization, cookie, content_type;
  std::string csrf;    // the X-Dsv3-Request header: browsers do not send it cross-site unasked
  std::string body;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // more fields: Set-Cookie, Cache-Control, ...
};

// Called on the server thread for every request.
using HttpHandler = std::function<HttpResponse(const HttpRequest& request)>;

}  // namespace dsv3::server
