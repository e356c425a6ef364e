#include "http/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

namespace dsv3::server {
namespace {

// The fields of /proc/self/stat after the command name (which may hold spaces and parens):
// fields[0] is field 3 (state), so field n is fields[n - 3].
std::vector<std::string> StatFields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  std::getline(in, line);
  std::vector<std::string> fields;
  const auto close = line.rfind(')');
  if (close == std::string::npos) return fields;
  std::istringstream rest(line.substr(close + 1));
  for (std::string f; rest >> f;) fields.push_back(f);
  return fields;
}

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  for (std::string key; in >> key;) {
    if (key == "btime") {
      double v = 0;
      in >> v;
      return v;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

double OpenFds() {
  std::error_code ec;
  double n = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return n;
}

void Gauge(prometheus::Registry& r, const char* name, const char* help, double value) {
  prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({}).Set(value);
}

}  // namespace

void AddProcessMetrics(prometheus::Registry& registry) {
  const std::vector<std::string> f = StatFields();
  const auto field = [&](size_t n) { return n >= 3 && n - 3 < f.size() ? std::stod(f[n - 3]) : 0.0; };
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  prometheus::BuildCounter()
      .Name("process_cpu_seconds_total")
      .Help("Total user and system CPU time spent in seconds.")
      .Register(registry)
      .Add({})
      .Increment((field(14) + field(15)) / ticks);
  Gauge(registry, "process_resident_memory_bytes", "Resident memory size in bytes.", field(24) * page);
  Gauge(registry, "process_virtual_memory_bytes", "Virtual memory size in bytes.", field(23));
  Gauge(registry, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
        BootTimeSeconds() + field(22) / ticks);
  Gauge(registry, "process_open_fds", "Number of open file descriptors.", OpenFds());
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    Gauge(registry, "process_max_fds", "Maximum number of open file descriptors.",
          limit.rlim_cur == RLIM_INFINITY ? -1.0 : static_cast<double>(limit.rlim_cur));
  }
}

}  // namespace dsv3::server
