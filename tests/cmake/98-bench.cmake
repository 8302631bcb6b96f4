# Smoke runs of the bench/ scripts (label `bench`): each runs end to end in its --quick mode on SmolLM2 and
# asserts nothing about timings (timings are never tests). Only the scripts that need nothing beyond kvlens'
# own build: the llama.cpp tools (bench/build_llama_tools.sh) and the reference venv are not built here.
if(Python3_Interpreter_FOUND)
  add_test(NAME bench_score_state_smoke
           COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/bench/score_state.py --quick
                   --kvlens-bin-dir ${CMAKE_BINARY_DIR}/bin)
  # kvlens serve alone, default and --batch-invariant: the script's own greedy check (answers unchanged with
  # concurrency) still applies.
  add_test(NAME bench_serve_smoke
           COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/bench/compare_server.py --quick --servers kvlens,kvlens-bi
                   --kvlens $<TARGET_FILE:kvlens-cli>)
  set_tests_properties(bench_score_state_smoke bench_serve_smoke PROPERTIES FIXTURES_REQUIRED smollm2
                       LABELS bench TIMEOUT 120 ENVIRONMENT "KVLENS_CACHE_DIR=${KVLENS_CACHE_DIR}")
endif()
