// RPC counts and latencies for /metrics, recorded by one gRPC server interceptor that every
// method passes through. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include <grpcpp/support/server_interceptor.h>

namespace dsv3::server {

class RpcStats {
 public:
  // Histogram bucket upper bounds in seconds (Prometheus `le`).
  static constexpr std::array<double, 12> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                      0.05,   0.1,   0.25,   0.5,   1.0,  5.0};
  void Record(const std::string& method, int code, double seconds);
  // Prometheus text: dsv3_rpc_requests_total and dsv3_rpc_duration_seconds.
  std::string Render() const;

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> counts{};
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, Histogram> durations_;
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
// A Prometheus label value with \, " and newlines escaped.
std::string EscapeLabel(const std::string& value);

}  // namespace dsv3::server
