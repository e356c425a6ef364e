// What this build is: its version, the git commit it was built from, and what the engine in
// the same build tree can do. Every binary prints it for --version; dsv3d exports it as the
// dsv3_build_info metric. Generated at configure time (cmake/Dsv3BuildInfo.cmake).
#pragma once

#include <string>

namespace dsv3 {

struct BuildInfo {
  const char* version;     // the project version, e.g. "0.1.0"
  const char* commit;      // short git commit, or "unknown" outside a git checkout
  const char* build_type;  // CMAKE_BUILD_TYPE
  bool engine;             // the LibTorch engine (dsv3-worker) was built
  bool cuda_kernels;       // kernels/cuda compiled (nvcc found)
  bool cuda;               // ... and bound to a CUDA LibTorch: the engine trains on GPUs
  bool nccl;               // the NCCL communicator is compiled in
  bool gloo;               // the Gloo communicator is compiled in
};

const BuildInfo& GetBuildInfo();

// "<program> 0.1.0 (commit 352cea5abcd1, Release; engine: CUDA no, NCCL yes, Gloo yes)".
std::string VersionLine(const std::string& program);

}  // namespace dsv3
