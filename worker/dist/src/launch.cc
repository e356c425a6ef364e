#include "dsv3/dist/launch.h"

#include <cstdlib>
#include <stdexcept>

#include "dsv3/common/env.h"

namespace dsv3::dist {
namespace {

int ParseInt(const std::string& name, const std::string& value, int min) {
  size_t used = 0;
  long v = 0;
  try {
    v = std::stol(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != value.size() || v < min || v > 1 << 24) {
    throw std::runtime_error(name + "=" + value + " is not a valid number (expected an integer >= " +
                             std::to_string(min) + ")");
  }
  return static_cast<int>(v);
}

// SLURM_TASKS_PER_NODE looks like "2(x3),1": the first node's count is what a single-node
// job has; SLURM_NTASKS_PER_NODE is a plain number when --ntasks-per-node was given.
int SlurmLocalWorld(const EnvLookup& env, int world) {
  if (auto v = env(env::kSlurmNtasksPerNode)) return ParseInt(env::kSlurmNtasksPerNode, *v, 1);
  if (auto v = env(env::kSlurmTasksPerNode)) {
    const std::string first = v->substr(0, v->find_first_of("(,"));
    return ParseInt(env::kSlurmTasksPerNode, first, 1);
  }
  return world;
}

}  // namespace

EnvLookup ProcessEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr || *v == '\0') return std::nullopt;
    return std::string(v);
  };
}

std::string FirstSlurmHost(const std::string& nodelist) {
  // Hosts are separated by commas outside brackets; a bracket holds ranges of suffixes.
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) break;
    first.push_back(c);
  }
  const size_t open = first.find('[');
  if (open == std::string::npos) return first;
  const std::string prefix = first.substr(0, open);
  std::string inside = first.substr(open + 1, first.find(']') - open - 1);
  inside = inside.substr(0, inside.find(','));
  inside = inside.substr(0, inside.find('-'));  // keep the zero padding of the range start
  return prefix + inside + first.substr(first.find(']') + 1);
}

LaunchInfo DiscoverLaunch(const EnvLookup& env) {
  LaunchInfo info;
  if (auto rank = env(env::kRank)) {
    info.launcher = "torchrun";
    info.rank = ParseInt(env::kRank, *rank, 0);
    const auto world = env(env::kWorldSize);
    if (!world) throw std::runtime_error(std::string(env::kRank) + " is set but " + env::kWorldSize + " is not");
    info.world_size = ParseInt(env::kWorldSize, *world, 1);
    info.local_rank = env(env::kLocalRank) ? ParseInt(env::kLocalRank, *env(env::kLocalRank), 0) : info.rank;
    info.local_world_size =
        env(env::kLocalWorldSize) ? ParseInt(env::kLocalWorldSize, *env(env::kLocalWorldSize), 1) : info.world_size;
    const auto agent = env(env::kTorchElasticUseAgentStore);
    info.agent_store = agent && (*agent == "True" || *agent == "true" || *agent == "1");
  } else if (auto procid = env(env::kSlurmProcId)) {
    info.launcher = "slurm";
    info.rank = ParseInt(env::kSlurmProcId, *procid, 0);
    const auto ntasks = env(env::kSlurmNtasks);
    if (!ntasks) throw std::runtime_error("SLURM_PROCID is set but SLURM_NTASKS is not (start ranks with srun)");
    info.world_size = ParseInt(env::kSlurmNtasks, *ntasks, 1);
    info.local_rank = env(env::kSlurmLocalId) ? ParseInt(env::kSlurmLocalId, *env(env::kSlurmLocalId), 0) : 0;
    info.local_world_size = SlurmLocalWorld(env, info.world_size);
    const auto nodes = env(env::kSlurmJobNodeList) ? env(env::kSlurmJobNodeList) : env(env::kSlurmNodeList);
    if (nodes) info.master_addr = FirstSlurmHost(*nodes);
  } else if (auto ompi = env(env::kOmpiRank)) {
    info.launcher = "mpirun";
    info.rank = ParseInt(env::kOmpiRank, *ompi, 0);
    const auto size = env(env::kOmpiSize);
    if (!size) throw std::runtime_error("OMPI_COMM_WORLD_RANK is set but OMPI_COMM_WORLD_SIZE is not");
    info.world_size = ParseInt(env::kOmpiSize, *size, 1);
    info.local_rank =
        env(env::kOmpiLocalRank) ? ParseInt(env::kOmpiLocalRank, *env(env::kOmpiLocalRank), 0) : 0;
    info.local_world_size = env(env::kOmpiLocalSize)
                                ? ParseInt(env::kOmpiLocalSize, *env(env::kOmpiLocalSize), 1)
                                : info.world_size;
  }
  for (const char* name : {env::kTorchElasticRestartCount, env::kSlurmRestartCount, env::kAttempt}) {
    if (auto g = env(name)) {
      info.generation = *g;
      break;
    }
  }
  if (auto addr = env(env::kMasterAddr)) info.master_addr = *addr;
  if (auto port = env(env::kMasterPort)) info.master_port = ParseInt(env::kMasterPort, *port, 1);
  if (info.master_port > 65535) {
    throw std::runtime_error(std::string(env::kMasterPort) + "=" + std::to_string(info.master_port) +
                             " is not a TCP port (1-65535)");
  }
  if (info.rank >= info.world_size) {
    throw std::runtime_error("rank " + std::to_string(info.rank) + " (from " + info.launcher +
                             "'s variables) is outside the world of " + std::to_string(info.world_size) + " ranks");
  }
  if (info.local_rank >= info.local_world_size) {
    throw std::runtime_error("local rank " + std::to_string(info.local_rank) + " is outside the " +
                             std::to_string(info.local_world_size) + " ranks on this node");
  }
  return info;
}

}  // namespace dsv3::dist
