# dsv3_build_info: what this build is, for every binary's --version and dsv3d's
# dsv3_build_info metric: the version, the git commit, and what the engine was built with.
# Included after the engine's subdirectories, whose find results (Gloo, NCCL) it reads.

set(DSV3_GIT_COMMIT "unknown")
find_package(Git QUIET)
if(GIT_FOUND AND EXISTS "${CMAKE_SOURCE_DIR}/.git")
  execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --short=12 HEAD
                  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE _commit
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
  if(_rc EQUAL 0 AND _commit)
    set(DSV3_GIT_COMMIT "${_commit}")
  endif()
  # A new commit reconfigures (cheap) so that the commit stays true; edits do not.
  execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --git-path HEAD WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
                  OUTPUT_VARIABLE _head OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  execute_process(COMMAND ${GIT_EXECUTABLE} symbolic-ref -q HEAD WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
                  OUTPUT_VARIABLE _ref OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  foreach(_file "${_head}" "${_ref}")
    if(_file)
      execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --git-path "${_file}"
                      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE _path
                      OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      get_filename_component(_path "${_path}" ABSOLUTE BASE_DIR ${CMAKE_SOURCE_DIR})
      if(EXISTS "${_path}")
        set_property(DIRECTORY ${CMAKE_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_path}")
      endif()
    endif()
  endforeach()
endif()

set(DSV3_BUILD_ENGINE_FLAG false)
set(DSV3_BUILD_CUDA_FLAG false)
set(DSV3_BUILD_NCCL_FLAG false)
set(DSV3_BUILD_GLOO_FLAG false)
if(DSV3_BUILD_ENGINE)
  set(DSV3_BUILD_ENGINE_FLAG true)
  if(DSV3_HAVE_CUDA AND DSV3_TORCH_HAS_CUDA)
    set(DSV3_BUILD_CUDA_FLAG true)
  endif()
  if(DSV3_NCCL_INCLUDE AND DSV3_NCCL_LIBRARY AND DSV3_CUDART_INCLUDE AND DSV3_CUDART_LIBRARY)
    set(DSV3_BUILD_NCCL_FLAG true)
  endif()
  if(DSV3_GLOO_INCLUDE)
    set(DSV3_BUILD_GLOO_FLAG true)
  endif()
endif()
set(DSV3_BUILD_CUDA_COMPILED_FLAG false)
if(DSV3_HAVE_CUDA)
  set(DSV3_BUILD_CUDA_COMPILED_FLAG true)
endif()

configure_file(${CMAKE_SOURCE_DIR}/common/src/build_info.cc.in ${CMAKE_BINARY_DIR}/generated/build_info.cc @ONLY)
add_library(dsv3_build_info STATIC ${CMAKE_BINARY_DIR}/generated/build_info.cc)
target_include_directories(dsv3_build_info PUBLIC ${CMAKE_SOURCE_DIR}/common/include)
dsv3_set_warnings(dsv3_build_info)
