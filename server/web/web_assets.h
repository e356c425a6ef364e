// The dashboard's own files (server/web/assets/), carried inside dsv3d by the build
// (cmake/Dsv3EmbedFiles.cmake).
#pragma once

#include <string_view>

namespace dsv3::server::web {

struct WebAsset {
  std::string_view name;   // the file's name under assets/, e.g. "dsv3.js"
  std::string_view bytes;
};

// nullptr when there is no such file.
const WebAsset* FindWebAsset(std::string_view name);

}  // namespace dsv3::server::web
