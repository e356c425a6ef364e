#include "rpc/rpc_stats.h"

#include <chrono>
#include <cstdio>
#include <sstream>

namespace dsv3::server {
namespace {

const char* CodeName(int code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}

std::string Number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

class RpcStatsInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcStatsInterceptor(RpcStats& stats, std::string method)
      : stats_(stats), method_(std::move(method)), start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      stats_.Record(method_, static_cast<int>(methods->GetSendStatus().error_code()), seconds);
    }
    methods->Proceed();
  }

 private:
  RpcStats& stats_;
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
};

}  // namespace

std::string ShortMethodName(const char* method) {
  std::string m = method != nullptr ? method : "";
  if (!m.empty() && m[0] == '/') m.erase(0, 1);
  return m;
}

std::string EscapeLabel(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

void RpcStats::Record(const std::string& method, int code, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{method, code}];
  Histogram& h = durations_[method];
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) ++h.counts[i];
  }
  ++h.count;
  h.sum += seconds;
}

std::string RpcStats::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream os;
  os << "# HELP dsv3_rpc_requests_total gRPC requests handled, by method and status code.\n"
     << "# TYPE dsv3_rpc_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    os << "dsv3_rpc_requests_total{method=\"" << EscapeLabel(key.first) << "\",code=\"" << CodeName(key.second)
       << "\"} " << n << "\n";
  }
  os << "# HELP dsv3_rpc_duration_seconds gRPC handling time, by method.\n"
     << "# TYPE dsv3_rpc_duration_seconds histogram\n";
  for (const auto& [method, h] : durations_) {
    const std::string m = EscapeLabel(method);
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      os << "dsv3_rpc_duration_seconds_bucket{method=\"" << m << "\",le=\"" << Number(kBuckets[i]) << "\"} "
         << h.counts[i] << "\n";
    }
    os << "dsv3_rpc_duration_seconds_bucket{method=\"" << m << "\",le=\"+Inf\"} " << h.count << "\n"
       << "dsv3_rpc_duration_seconds_sum{method=\"" << m << "\"} " << Number(h.sum) << "\n"
       << "dsv3_rpc_duration_seconds_count{method=\"" << m << "\"} " << h.count << "\n";
  }
  return os.str();
}

grpc::experimental::Interceptor* RpcStatsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new RpcStatsInterceptor(stats_, ShortMethodName(info->method()));
}

}  // namespace dsv3::server
