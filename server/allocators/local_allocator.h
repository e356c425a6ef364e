// The `local` allocator: ranks are child processes of dsv3d on this machine, one slot per
// rank (a CPU rank or a GPU). The processes themselves are procs::RankProcesses'; this
// adapter adds the slot accounting and the Allocator interface.
#pragma once

#include <memory>

#include "allocators/allocator.h"

namespace dsv3::server {

// `slots`: how many ranks may run at once. The destructor stops watching (ranks keep running).
std::unique_ptr<Allocator> MakeLocalAllocator(int slots);

}  // namespace dsv3::server
