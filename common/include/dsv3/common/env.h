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
// Set by dsv3d for the ranks it starts: where to report and as which job. A rank without
// DSV3_CONTROLLER trains standalone.
inline constexpr const char* kController = "DSV3_CONTROLLER";
inline constexpr const char* kJobId = "DSV3_JOB_ID";
inline constexpr const char* kAttempt = "DSV3_ATTEMPT";
inline constexpr const char* kJobCredential = "DSV3_JOB_CREDENTIAL";
// PEM file of the CA a rank trusts when it dials a TLS controller (unset: plaintext).
inline constexpr const char* kControllerCa = "DSV3_CONTROLLER_CA";
// dsv3ctl: a user's bearer token (overrides the one `dsv3ctl login` saved) and the CA that
// verifies the controller.
inline constexpr const char* kToken = "DSV3_TOKEN";
inline constexpr const char* kTlsCa = "DSV3_TLS_CA";
// dsv3-agent: its credential (instead of --token-file).
inline constexpr const char* kAgentToken = "DSV3_AGENT_TOKEN";
inline constexpr const char* kOpenBlasNumThreads = "OPENBLAS_NUM_THREADS";
// OpenBLAS kernel choice; see LimitOpenBlasThreads / PreferFastOpenBlasKernels.
inline constexpr const char* kOpenBlasCoreType = "OPENBLAS_CORETYPE";
// Set when dsv3-worker re-executed itself to pick OpenBLAS kernels; prevents a loop.
inline constexpr const char* kBlasReexec = "DSV3_BLAS_REEXEC";

}  // namespace dsv3::env
