// The controller's /metrics page in the Prometheus text format (version 0.0.4), built with
// prometheus-cpp's registry and text serializer at each scrape.
#pragma once

#include <string>

#include "allocators/allocator.h"
#include "jobs/job_manager.h"
#include "rpc/rpc_stats.h"
#include "store/job_store.h"

namespace dsv3::server {

// Per job (labels job_id, job_name) for every job not ended, however old, and jobs that
// ended within the last hour: training gauges, step, tokens, checkpoint step and time,
// restarts, state; per rank of a running job: step and busy time, straggler flag.
// Controller-wide: jobs by state, queue length, restarts, slots, RPC counts and latency
// histograms, dsv3_build_info, and the process_* metrics of dsv3d.
std::string RenderMetrics(const JobStore& store, const JobManager& manager, const Allocator& allocator,
                          const RpcStats& rpc);

}  // namespace dsv3::server
