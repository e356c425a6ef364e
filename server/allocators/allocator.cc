#include "allocators/allocator.h"

#include <sstream>

#include "dsv3/common/env.h"

namespace dsv3::server {

namespace {
constexpr const char* kPerRank[] = {env::kRank, env::kWorldSize, env::kLocalRank, env::kLocalWorldSize, env::kMasterAddr,
                                    env::kMasterPort};
}  // namespace

bool IsPerRankVariable(const std::string& name) {
  for (const char* v : kPerRank) {
    if (name == v) return true;
  }
  return false;
}

std::string Allocator::DescribeLaunch(const LaunchSpec& spec) const {
  std::ostringstream out;
  for (const auto& r : spec.ranks) {
    out << "  rank " << r.rank << ":";
    for (const char* k : kPerRank) {
      if (const auto it = r.env.find(k); it != r.env.end()) out << " " << k << "=" << it->second;
    }
    for (const auto& a : r.argv) out << " " << a;
    out << "\n";
  }
  return out.str();
}

}  // namespace dsv3::server
