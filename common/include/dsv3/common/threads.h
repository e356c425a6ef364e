// Thread-pool hygiene for ranks: OpenBLAS's own threads fight LibTorch's intra-op pool for
// the same cores (measured 2.5x slower on 2 cores), so every rank gives OpenBLAS one thread.
#pragma once

namespace dsv3 {

// Calls openblas_set_num_threads(n) when the process's BLAS is OpenBLAS (looked up at run
// time, so any BLAS links). Returns whether OpenBLAS was found. Call before the first matmul.
bool LimitOpenBlasThreads(int n);

// OpenBLAS 0.3.21 falls back to its Prescott (SSE3) kernels on CPUs it cannot name, such as
// this project's virtual Xeons: 3.2x slower on the nano model. The variable that picks the
// kernels is read when libopenblas loads, so this re-executes the process (execv of
// /proc/self/exe with `argv`) with OPENBLAS_CORETYPE set to SkylakeX (AVX-512 F/BW/DQ/VL) or
// Haswell (AVX2 + FMA) when: the variable is unset, OpenBLAS reports Prescott, and the CPU
// has those features. Returns only when nothing needed doing (or exec failed).
void PreferFastOpenBlasKernels(char** argv);

}  // namespace dsv3
