// Where this process sits in the job, learned from whichever launcher started it:
//   dsv3d and torchrun   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//                        (TORCHELASTIC_USE_AGENT_STORE=True: the agent hosts the store)
//   SLURM srun           SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE or
//                        SLURM_TASKS_PER_NODE; master = first host of SLURM_JOB_NODELIST
//   OpenMPI mpirun       OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
// MASTER_ADDR and MASTER_PORT, when set, win over what SLURM or MPI imply (so a user can
// point srun ranks at a chosen host); without them the port defaults to 29500 (torchrun's).
// No LibTorch here: dsv3ctl and the tests use it too.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace dsv3::dist {

struct LaunchInfo {
  std::string launcher = "none";  // torchrun | slurm | mpirun | none (one process)
  int rank = 0, world_size = 1;
  int local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // the TCPStore server is not ours to start (torchrun >= 2.3)
  // Which start of the job this is (TORCHELASTIC_RESTART_COUNT, SLURM_RESTART_COUNT,
  // DSV3_ATTEMPT): rendezvous keys are kept apart per start, so a store that outlives a
  // restart (torchrun's agent) cannot count ranks of the previous one.
  std::string generation = "0";
};

// Reads a variable; nullopt when unset. Tests pass their own.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvLookup ProcessEnv();

// Throws std::runtime_error naming the variable and its value when a launcher's variables
// are malformed or inconsistent (rank outside the world, a non-number).
LaunchInfo DiscoverLaunch(const EnvLookup& env = ProcessEnv());

// The first host of a SLURM node list: "gpu[03-05,9],cpu1" -> "gpu03".
std::string FirstSlurmHost(const std::string& nodelist);

}  // namespace dsv3::dist
