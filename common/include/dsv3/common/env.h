// Environment variables dsv3 reads or sets, named once.
#pragma once

namespace dsv3::env {

// Set by dsv3d and torchrun for every rank.
inline constexpr const char* kRank = "RANK";
inline constexpr const char* kWorldSize = "WORLD_SIZE";
inline constexpr const char* kLocalRank = "LOCAL_RANK";
inline constexpr const char* kLocalWorldSize = "LOCAL_WORLD_SIZE";
inline constexpr const char* kMasterAddr = "MASTER_ADDR";
inline constexpr const char* kMasterPort = "MASTER_PORT";
// OpenBLAS kernel choice; see LimitOpenBlasThreads / PreferFastOpenBlasKernels.
inline constexpr const char* kOpenBlasCoreType = "OPENBLAS_CORETYPE";
// Set when dsv3-worker re-executed itself to pick OpenBLAS kernels; prevents a loop.
inline constexpr const char* kBlasReexec = "DSV3_BLAS_REEXEC";

}  // namespace dsv3::env
