#include "dsv3/procs/pem.h"

#include <fstream>
#include <sstream>

namespace dsv3::procs {

absl::StatusOr<std::string> ReadPemFile(const std::string& what, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(what + ": cannot read " + path);
  std::ostringstream text;
  text << f.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(what + ": " + path + " is not a PEM file");
  }
  return text.str();
}

}  // namespace dsv3::procs
