// Thread-pool hygiene for ranks: OpenBLAS's own threads fight LibTorch's intra-op pool for
// the same cores (measured 2.5x slower on 2 cores), so every rank gives OpenBLAS one thread.
#pragma once

namespace dsv3 {

// Calls openblas_set_num_threads(n) when the process's BLAS is OpenBLAS (looked up at run
// time, so any BLAS links). Returns whether OpenBLAS was found. Call before the first matmul.
bool LimitOpenBlasThreads(int n);

}  // namespace dsv3
