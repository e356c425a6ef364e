// dsv3-worker's exit statuses. dsv3d restarts an attempt whose rank failed with 1 (or a
// signal): a crash, a lost peer, a hang may not happen again. The statuses from 3 up say
// the same attempt would fail the same way, so dsv3d fails the job at once with the rank's
// reason instead of retrying max_restarts times. Documented in the README.
#pragma once

#include <stdexcept>
#include <string>

namespace dsv3 {

namespace exit_status {
inline constexpr int kOk = 0;
inline constexpr int kFailed = 1;                // anything else; a restart may help
inline constexpr int kUsage = 2;                 // bad command line or DSV3_FAULT
inline constexpr int kConfigRefused = 3;         // the config is invalid or this build cannot run it
inline constexpr int kDataMissing = 4;           // the data files it names are not there or unreadable
inline constexpr int kCheckpointUnreadable = 5;  // the checkpoint to resume from cannot be loaded
inline constexpr int kOutOfMemory = 6;           // host or device memory ran out

// Whether a restart cannot fix a rank that exited with `status`.
inline bool IsPermanent(int status) { return status >= kConfigRefused && status <= kOutOfMemory; }

// "refused its config", for dsv3d's reasons.
inline const char* Describe(int status) {
  switch (status) {
    case kConfigRefused: return "refused its config";
    case kDataMissing: return "cannot find or read its data";
    case kCheckpointUnreadable: return "cannot load its checkpoint";
    case kOutOfMemory: return "ran out of memory";
    default: return "failed";
  }
}
}  // namespace exit_status

// An error a restart cannot fix; dsv3-worker exits with its status (exit_status above).
class PermanentError : public std::runtime_error {
 public:
  PermanentError(int status, const std::string& what) : std::runtime_error(what), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

}  // namespace dsv3
