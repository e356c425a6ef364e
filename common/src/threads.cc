#include "dsv3/common/threads.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "dsv3/common/env.h"

namespace dsv3 {

bool LimitOpenBlasThreads(int n) {
  using SetThreads = void (*)(int);
  auto* set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set == nullptr) return false;
  set(n);
  return true;
}

void PreferFastOpenBlasKernels(char** argv) {
  if (std::getenv(env::kOpenBlasCoreType) != nullptr || std::getenv(env::kBlasReexec) != nullptr) return;
  using CoreName = char* (*)();
  auto* corename = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (corename == nullptr) return;  // not OpenBLAS
  const std::string current = corename();
  if (current != "Prescott" && current != "prescott") return;
  const char* better = nullptr;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl")) {
    better = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    better = "Haswell";
  }
#endif
  if (better == nullptr) return;
  setenv(env::kOpenBlasCoreType, better, 1);
  setenv(env::kBlasReexec, "1", 1);
  execv("/proc/self/exe", argv);
}

}  // namespace dsv3
