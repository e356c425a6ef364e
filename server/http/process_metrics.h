// The standard process_* metrics of the Prometheus client libraries (CPU seconds, resident
// and virtual memory, open and maximum file descriptors, start time) for this process, read
// from /proc at each scrape. prometheus-cpp's core has no process collector.
#pragma once

#include <prometheus/registry.h>

namespace dsv3::server {

void AddProcessMetrics(prometheus::Registry& registry);

}  // namespace dsv3::server
