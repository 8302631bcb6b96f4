# Fuzz targets (fuzz/, built with -DKVLENS_FUZZ=ON, clang): each replays its seed corpus and regression
# inputs, then fuzzes for KVLENS_FUZZ_SECONDS (30 by default) in the tests. Longer runs are a command:
#   build-asan/fuzz/fuzz_<target> -max_total_time=600 -max_len=4096 CORPUS_DIR fuzz/corpus/<target>
if(KVLENS_FUZZ)
  set(KVLENS_FUZZ_SECONDS 30 CACHE STRING "seconds each fuzz target runs in the tests")
  foreach(name ${KVLENS_FUZZ_TARGETS})
    add_test(NAME fuzz_${name}
             COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/fuzz_smoke.sh $<TARGET_FILE:fuzz_${name}>
                     ${PROJECT_SOURCE_DIR}/fuzz/corpus/${name} ${PROJECT_SOURCE_DIR}/fuzz/regressions/${name}
                     ${KVLENS_FUZZ_SECONDS})
    set_tests_properties(fuzz_${name} PROPERTIES LABELS fuzz TIMEOUT 600)
    if(TARGET tiny-models)
      add_dependencies(fuzz_${name} tiny-models)
    endif()
  endforeach()
endif()
