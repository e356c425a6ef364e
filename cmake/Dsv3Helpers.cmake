# Shared build helpers: warning flags, test registration, libFuzzer targets.

# Warnings every dsv3 target compiles with; DSV3_WERROR turns them into errors.
function(dsv3_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  if(DSV3_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# One unity translation unit for a LibTorch library when DSV3_UNITY_ENGINE is on (its files
# must then not repeat a name in their anonymous namespaces).
function(dsv3_unity_engine target)
  if(DSV3_UNITY_ENGINE)
    set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 0)
  endif()
endfunction()

# dsv3_add_test(NAME name SOURCES a.cc b.cc LIBS lib... LABELS unit|integration|e2e|gpu [TIMEOUT s]
#               [ARGS arg...])
# Builds one GoogleTest binary and registers it with ctest under the given labels.
function(dsv3_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS;ARGS" ${ARGN})
  if(NOT T_LABELS)
    message(FATAL_ERROR "dsv3_add_test(${T_NAME}): LABELS is required (unit, integration, e2e, gpu)")
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  dsv3_set_warnings(${T_NAME})
  target_compile_definitions(${T_NAME} PRIVATE
    DSV3_SOURCE_DIR="${PROJECT_SOURCE_DIR}" DSV3_BINARY_DIR="${PROJECT_BINARY_DIR}")
  add_test(NAME ${T_NAME} COMMAND ${T_NAME} ${T_ARGS})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT})
endfunction()

# libFuzzer needs clang. When the project compiler is clang the fuzzer is a normal target;
# otherwise (the usual g++ build) clang++ compiles the fuzzer and the sources it names
# directly, so the fuzz targets exist in every build where clang is installed.
find_program(DSV3_CLANGXX NAMES clang++ clang++-14)
if(DSV3_FUZZ STREQUAL "OFF")
  set(DSV3_FUZZ_ENABLED OFF)
elseif(CMAKE_CXX_COMPILER_ID STREQUAL "Clang" OR DSV3_CLANGXX)
  set(DSV3_FUZZ_ENABLED ON)
elseif(DSV3_FUZZ STREQUAL "ON")
  message(FATAL_ERROR "DSV3_FUZZ=ON but no clang++ was found (apt-get install clang)")
else()
  message(STATUS "dsv3: clang++ not found, libFuzzer targets are not built")
  set(DSV3_FUZZ_ENABLED OFF)
endif()

# dsv3_add_fuzzer(NAME name SOURCES fuzz.cc lib_sources... INCLUDES dirs... CORPUS dir SECONDS n
#                 [LINK -lz...] [LIBS targets...] [DEFINES X=1...])
# Registers a ctest (label "fuzz") that runs the fuzzer for SECONDS on a copy-free seed
# corpus: new inputs go to a scratch folder in the build tree, never into the source tree.
# A fuzzer with LIBS (CMake targets, e.g. dsv3_server) needs those built with clang too,
# so it exists only where the project compiler is clang (the sanitizer build).
function(dsv3_add_fuzzer)
  if(NOT DSV3_FUZZ_ENABLED)
    return()
  endif()
  cmake_parse_arguments(F "" "NAME;CORPUS;SECONDS" "SOURCES;INCLUDES;LINK;LIBS;DEFINES" ${ARGN})
  if(F_LIBS AND NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    return()
  endif()
  set(flags -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    add_executable(${F_NAME} ${F_SOURCES})
    target_include_directories(${F_NAME} PRIVATE ${F_INCLUDES})
    target_compile_options(${F_NAME} PRIVATE ${flags})
    target_compile_definitions(${F_NAME} PRIVATE ${F_DEFINES})
    target_link_options(${F_NAME} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(${F_NAME} PRIVATE ${F_LIBS} nlohmann_json::nlohmann_json ${F_LINK})
    set(exe $<TARGET_FILE:${F_NAME}>)
  else()
    set(exe ${CMAKE_CURRENT_BINARY_DIR}/fuzzers/${F_NAME})
    set(incs)
    foreach(d ${F_INCLUDES})
      list(APPEND incs -I${d})
    endforeach()
    foreach(d ${F_DEFINES})
      list(APPEND incs -D${d})
    endforeach()
    add_custom_command(
      OUTPUT ${exe}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/fuzzers
      COMMAND ${DSV3_CLANGXX} ${flags} ${incs} ${F_SOURCES} -o ${exe} ${F_LINK}
      DEPENDS ${F_SOURCES}
      IMPLICIT_DEPENDS CXX ${F_SOURCES}
      COMMENT "Building libFuzzer target ${F_NAME} with clang++"
      VERBATIM)
    add_custom_target(${F_NAME} ALL DEPENDS ${exe})
  endif()
  set(scratch ${CMAKE_CURRENT_BINARY_DIR}/${F_NAME}.corpus)
  add_test(NAME ${F_NAME}
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
      ${CMAKE_COMMAND} -DEXE=${exe} -DSCRATCH=${scratch} -DCORPUS=${F_CORPUS}
      -DSECONDS=${F_SECONDS} -P ${PROJECT_SOURCE_DIR}/cmake/RunFuzzer.cmake)
  set_tests_properties(${F_NAME} PROPERTIES LABELS "fuzz;unit" TIMEOUT 300)
endfunction()
