#include "web/web_frontend.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "web/api.h"
#include "web/request_parts.h"
#include "web/web_assets.h"

namespace dsv3::server::web {
namespace {

std::string ContentTypeOf(std::string_view name) {
  const auto ends = [&](std::string_view ext) {
    return name.size() >= ext.size() && name.substr(name.size() - ext.size()) == ext;
  };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  return "application/octet-stream";
}

// Every page and script: nothing from elsewhere, no inline script, not framed.
void AddPageHeaders(HttpResponse& r) {
  r.headers.emplace_back("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; "
                         "base-uri 'none'; form-action 'self'");
  r.headers.emplace_back("X-Content-Type-Options", "nosniff");
  r.headers.emplace_back("Referrer-Policy", "no-referrer");
  r.headers.emplace_back("Cache-Control", "no-cache");
}

// The page file for a dashboard path, or "".
std::string PageFor(const std::string& path) {
  if (path == "/" || path == "/jobs") return "jobs.html";
  if (path == "/nodes") return "nodes.html";
  if (path == "/login") return "login.html";
  if (const auto job = ParseJobPath(path, "/jobs/"); job && job->rest.empty()) return "job.html";
  return "";
}

}  // namespace

struct WebFrontend::Impl {
  Api api;
  std::string chartjs;        // its text, read once at start
  std::string chartjs_error;  // why there is none
};

WebFrontend::WebFrontend(std::shared_ptr<grpc::Channel> controller, WebOptions options)
    : impl_(new Impl{Api(std::move(controller), options), "", ""}) {
  std::ifstream in(options.chartjs_path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  impl_->chartjs = text.str();
  if (!in || impl_->chartjs.empty()) {
    impl_->chartjs_error = "Chart.js was not found at " + options.chartjs_path +
                           " on the controller host (apt-get install libjs-chart.js, or dsv3d --chartjs FILE)";
  }
}

WebFrontend::~WebFrontend() = default;

std::optional<HttpResponse> WebFrontend::Handle(const HttpRequest& request) const {
  const std::string path = PathOf(request.target);
  if (path.rfind("/api/v1/", 0) == 0) return impl_->api.Handle(request);
  if (request.method == "POST") return std::nullopt;
  HttpResponse r;
  if (path == "/static/chart.js") {
    // Without Chart.js the pages still work; the script it would have been says why charts are missing.
    r.content_type = "text/javascript; charset=utf-8";
    r.body = impl_->chartjs_error.empty()
                 ? impl_->chartjs
                 : "window.dsv3ChartError = " + nlohmann::json(impl_->chartjs_error).dump() + ";\n";
  } else if (path.rfind("/static/", 0) == 0) {
    const WebAsset* asset = FindWebAsset(path.substr(std::string("/static/").size()));
    if (asset == nullptr || asset->name.find(".html") != std::string_view::npos) return std::nullopt;
    r.content_type = ContentTypeOf(asset->name);
    r.body = std::string(asset->bytes);
  } else {
    const std::string page = PageFor(path);
    if (page.empty()) return std::nullopt;
    const WebAsset* asset = FindWebAsset(page);
    if (asset == nullptr) return HttpResponse{500, "text/plain; charset=utf-8", "this dsv3d was built without " + page, {}};
    r.content_type = ContentTypeOf(page);
    r.body = std::string(asset->bytes);
  }
  AddPageHeaders(r);
  return r;
}

}  // namespace dsv3::server::web
