// The `local` allocator: ranks are child processes of dsv3d on this machine, one slot per
// rank (a CPU rank or a GPU). Each rank runs in its own process group with stdout and stderr
// appended to its log file, so it outlives a controller crash and keeps its logs.
#pragma once

#include <memory>

#include "dsv3/server/allocator.h"

namespace dsv3::server {

// `slots`: how many ranks may run at once. Starts a watcher thread that reaps children and
// polls adopted processes; the destructor stops it (ranks keep running).
// `die_with_parent`: ranks get SIGKILL when the process that started them dies (dsv3-agent:
// a lost agent means lost ranks, never orphans still holding their peers in collectives).
// It must then be called, and Launch too, from a thread that lives as long as the process.
std::unique_ptr<Allocator> MakeLocalAllocator(int slots, bool die_with_parent = false);

// A process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or 0 when it
// is gone or a zombie. Together with the pid it names a process uniquely.
int64_t ProcessStartTime(int64_t pid);

}  // namespace dsv3::server
