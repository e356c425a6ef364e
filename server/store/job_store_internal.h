// What the JobStore's source files share: the connection behind the store's mutex and the
// SQLite-error-to-Status guard, the schema. Private to server/store.
#pragma once

#include <mutex>
#include <string>
#include <vector>

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

// Numbered migrations, applied in order inside one transaction each (job_store_schema.cc).
const std::vector<const char*>& Migrations();
// After the migrations: gives every job stored before migration 4 the plan of its config.
void BackfillPlans(sqlite::Db& db);

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
