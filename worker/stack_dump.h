// Every thread's stack of this process, symbolized, for a rank's diagnostics dump: taken
// without stopping the process (a signal to each thread records its frames; the caller
// symbolizes them). dsv3-worker is linked with its symbols exported (-rdynamic) so that
// its own frames have names.
#pragma once

#include <chrono>
#include <string>

namespace dsv3::worker {

// Once, early in main: the signal handler that records a thread's frames.
void InstallStackDumpHandler();

// "thread 1234 (dsv3-worker) [the caller]\n  #0 ...\n" for every thread; a thread that does
// not answer within `per_thread` (blocked with signals masked) is listed as such.
std::string DumpAllThreadStacks(std::chrono::milliseconds per_thread = std::chrono::milliseconds(500));

}  // namespace dsv3::worker
