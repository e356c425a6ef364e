#include "rpc/rpc_stats.h"

#include <chrono>

namespace dsv3::server {
namespace {

const char* CodeName(int code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
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

const std::vector<double>& RpcStats::Buckets() {
  static const std::vector<double> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                               0.05,   0.1,   0.25,   0.5,   1.0,  5.0};
  return kBuckets;
}

RpcStats::RpcStats()
    : requests_(prometheus::BuildCounter()
                    .Name("dsv3_rpc_requests_total")
                    .Help("gRPC requests handled, by method and status code.")
                    .Register(registry_)),
      durations_(prometheus::BuildHistogram()
                     .Name("dsv3_rpc_duration_seconds")
                     .Help("gRPC handling time, by method.")
                     .Register(registry_)) {}

void RpcStats::Record(const std::string& method, int code, double seconds) {
  requests_.Add({{"method", method}, {"code", CodeName(code)}}).Increment();
  durations_.Add({{"method", method}}, Buckets()).Observe(seconds);
}

std::vector<prometheus::MetricFamily> RpcStats::Collect() const { return registry_.Collect(); }

grpc::experimental::Interceptor* RpcStatsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new RpcStatsInterceptor(stats_, ShortMethodName(info->method()));
}

}  // namespace dsv3::server
