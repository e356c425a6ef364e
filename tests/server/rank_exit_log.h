// The rank exits an allocator reports through its exit callback, kept for a test to read:
// the allocator suites register Record and ask for one job's exits.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <vector>

#include "allocators/allocator.h"
#include "test_util.h"

namespace dsv3::server {

class RankExitLog {
 public:
  // The exit callback: Recorder() to Allocator::SetExitCallback.
  Allocator::ExitCallback Recorder() {
    return [this](const RankExit& e) {
      std::lock_guard<std::mutex> l(mu_);
      exits_.push_back(e);
    };
  }
  std::vector<RankExit> Of(int64_t job) {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<RankExit> out;
    for (const auto& e : exits_) {
      if (e.job_id == job) out.push_back(e);
    }
    return out;
  }
  // Whether `n` exits of `job` arrive within 20 s.
  bool Wait(int64_t job, size_t n) {
    return test::WaitFor([&] { return Of(job).size() >= n; }, std::chrono::seconds(20));
  }

 private:
  std::mutex mu_;
  std::vector<RankExit> exits_;
};

}  // namespace dsv3::server
