// DSV3_CHECK(cond) << "context": throws std::runtime_error("file:line: check failed: cond:
// context") when cond is false, so a worker can report the failure before it exits.
// For invariants in engine code; config errors are reported as Diagnostics instead.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dsv3::internal {

class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition) {
    stream_ << file << ":" << line << ": check failed: " << condition << ": ";
  }
  template <class T>
  CheckFailure& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }
  // Throws at the end of the full expression, after every << has run.
  ~CheckFailure() noexcept(false) { throw std::runtime_error(stream_.str()); }

 private:
  std::ostringstream stream_;
};

}  // namespace dsv3::internal

#define DSV3_CHECK(cond) \
  if (cond) {            \
  } else                 \
    ::dsv3::internal::CheckFailure(__FILE__, __LINE__, #cond)
