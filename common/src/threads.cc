#include "dsv3/common/threads.h"

#include <dlfcn.h>

namespace dsv3 {

bool LimitOpenBlasThreads(int n) {
  using SetThreads = void (*)(int);
  auto* set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set == nullptr) return false;
  set(n);
  return true;
}

}  // namespace dsv3
