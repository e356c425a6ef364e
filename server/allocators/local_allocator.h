// The `local` allocator: ranks are child processes of dsv3d on this machine, one slot per
// rank (a CPU rank or a GPU). The processes themselves are procs::RankProcesses'; this
// adapter adds the slot accounting and the Allocator interface.
#pragma once

#include <memory>

#include "allocators/allocator.h"

namespace dsv3::server {

// `slots`: how many ranks may run at once. The destructor stops watching (ranks keep running).
// `max_log_bytes`: each rank log's cap (procs::RankProcesses::SetLogCap; 0 = none).
std::unique_ptr<Allocator> MakeLocalAllocator(int slots, int64_t max_log_bytes = 0);

}  // namespace dsv3::server
