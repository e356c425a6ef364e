// Environment variables dsv3 reads or sets, named once: every name appears here and nowhere
// else (tests excepted, which set them as a user would).
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

// Rank timeouts (seconds): c10d's rendezvous, and any one collective.
inline constexpr const char* kRendezvousTimeout = "DSV3_RENDEZVOUS_TIMEOUT";
inline constexpr const char* kCollectiveTimeout = "DSV3_COLLECTIVE_TIMEOUT";
// Fault injection for tests (dist/faults.h): off unless set.
inline constexpr const char* kFault = "DSV3_FAULT";
// The sentencepiece plugin library (default: the one built next to dsv3_data).
inline constexpr const char* kSentencepiecePlugin = "DSV3_SENTENCEPIECE_PLUGIN";
// Gloo's network interface (c10d's own name), for hosts whose hostname resolves elsewhere.
inline constexpr const char* kGlooSocketIfname = "GLOO_SOCKET_IFNAME";

// Launchers other than dsv3d whose variables a rank reads to find its place (dist/launch).
// torchrun (elastic agent)
inline constexpr const char* kTorchElasticUseAgentStore = "TORCHELASTIC_USE_AGENT_STORE";
inline constexpr const char* kTorchElasticRestartCount = "TORCHELASTIC_RESTART_COUNT";
// srun
inline constexpr const char* kSlurmProcId = "SLURM_PROCID";
inline constexpr const char* kSlurmNtasks = "SLURM_NTASKS";
inline constexpr const char* kSlurmLocalId = "SLURM_LOCALID";
inline constexpr const char* kSlurmJobNodeList = "SLURM_JOB_NODELIST";
inline constexpr const char* kSlurmNodeList = "SLURM_NODELIST";
inline constexpr const char* kSlurmNtasksPerNode = "SLURM_NTASKS_PER_NODE";
inline constexpr const char* kSlurmTasksPerNode = "SLURM_TASKS_PER_NODE";
inline constexpr const char* kSlurmRestartCount = "SLURM_RESTART_COUNT";
// mpirun (Open MPI)
inline constexpr const char* kOmpiRank = "OMPI_COMM_WORLD_RANK";
inline constexpr const char* kOmpiSize = "OMPI_COMM_WORLD_SIZE";
inline constexpr const char* kOmpiLocalRank = "OMPI_COMM_WORLD_LOCAL_RANK";
inline constexpr const char* kOmpiLocalSize = "OMPI_COMM_WORLD_LOCAL_SIZE";

// The host's own: the search path for sbatch and friends, and where dsv3ctl keeps its
// saved credentials.
inline constexpr const char* kPath = "PATH";
inline constexpr const char* kHome = "HOME";
inline constexpr const char* kXdgConfigHome = "XDG_CONFIG_HOME";

}  // namespace dsv3::env
