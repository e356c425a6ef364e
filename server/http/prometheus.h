// The controller's /metrics page in the Prometheus text format (version 0.0.4).
#pragma once

#include <string>

#include "allocators/allocator.h"
#include "jobs/job_manager.h"
#include "rpc/rpc_stats.h"
#include "store/job_store.h"

namespace dsv3::server {

// Per job (labels job_id, job_name) for jobs that are active or ended within the last hour:
// training gauges, step, checkpoint step and age. Controller-wide: jobs by state, queue
// length, restarts, slots, RPC counts and latency histograms.
std::string RenderMetrics(const JobStore& store, const JobManager& manager, const Allocator& allocator,
                          const RpcStats& rpc);

}  // namespace dsv3::server
