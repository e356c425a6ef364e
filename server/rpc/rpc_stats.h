// RPC counts and latencies for /metrics, recorded by one gRPC server interceptor that every
// method passes through. Thread-safe.
#pragma once

#include <string>
#include <vector>

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace dsv3::server {

// Backed by prometheus-cpp's registry: its families are thread-safe, and /metrics serializes
// them with the rest of the page.
class RpcStats {
 public:
  // Histogram bucket upper bounds in seconds (Prometheus `le`).
  static const std::vector<double>& Buckets();
  RpcStats();
  void Record(const std::string& method, int code, double seconds);
  // dsv3_rpc_requests_total{method,code} and dsv3_rpc_duration_seconds{method}.
  std::vector<prometheus::MetricFamily> Collect() const;

 private:
  prometheus::Registry registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& durations_;
};

// Creates one interceptor per call that times it and records it in `stats` (which must
// outlive the server).
class RpcStatsInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcStatsInterceptorFactory(RpcStats& stats) : stats_(stats) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  RpcStats& stats_;
};

// "dsv3.v1.Controller/SubmitJob" from "/dsv3.v1.Controller/SubmitJob".
std::string ShortMethodName(const char* method);

}  // namespace dsv3::server
