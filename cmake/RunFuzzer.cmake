# Runs one libFuzzer binary for a bounded time: ctest's driver for dsv3_add_fuzzer().
file(REMOVE_RECURSE ${SCRATCH})
file(MAKE_DIRECTORY ${SCRATCH})
execute_process(
  COMMAND ${EXE} -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
          ${SCRATCH} ${CORPUS}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "fuzzer ${EXE} failed with exit code ${rc} (a crash input was written to the working directory)")
endif()
