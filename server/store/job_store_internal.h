// What the JobStore's source files share: the connection behind the store's mutex and the
// SQLite-error-to-Status guard. Private to server/src.
#pragma once

#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "store/job_store.h"
#include "store/sqlite.h"

namespace dsv3::server {

struct JobStore::Impl {
  explicit Impl(const std::string& path) : db(path) {}
  mutable std::mutex mu;
  mutable sqlite::Db db;
  int version = 0;
};

// Runs `fn` and turns a SQLite failure into a Status naming the operation.
template <class Fn>
absl::Status Guarded(const char* what, Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const sqlite::Error& e) {
    return absl::InternalError(std::string("job store: ") + what + ": " + e.what());
  }
}

}  // namespace dsv3::server
