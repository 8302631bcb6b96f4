# Fast/slow thinking (src/methods/fast_slow.*, src/eval/router_eval.*, `kvlens router`, `generate --think
# auto`) and the project's reasoning model (tools/reasoner, the committed GGUF fixture).
set(KVLENS_REASONER_MODEL ${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf)
kvlens_add_gtest(fast_slow_test ${PROJECT_SOURCE_DIR}/src/methods/fast_slow_test.cpp)
target_compile_definitions(fast_slow_test PRIVATE KVLENS_REASONER_MODEL="${KVLENS_REASONER_MODEL}")
kvlens_add_gtest(reasoner_fixture_test ${PROJECT_SOURCE_DIR}/tools/reasoner/reasoner_fixture_test.cpp)
target_compile_definitions(reasoner_fixture_test PRIVATE KVLENS_REASONER_MODEL="${KVLENS_REASONER_MODEL}")

# label -> train -> eval -> generate --think auto end to end, on the tiny random qwen3 model (the same
# commands a user runs on Qwen3-8B) and on the reasoning model; a router for another model is refused.
add_test(NAME router_cli
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/router_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR} ${KVLENS_REASONER_MODEL})
# Alone: its decodes spin ggml threads, and beside another decoding test (FastSlow.Tracing...) under the
# sanitizers it ran past 600 s where alone it takes 18 s.
set_tests_properties(router_cli PROPERTIES LABELS cli TIMEOUT 600 RUN_SERIAL TRUE)
if(TARGET tiny-models)
  add_dependencies(fast_slow_test tiny-models)
endif()

# The reasoner v2 (issue #13): fast answers and cut traces (a forced </think> after the answer line).
kvlens_add_gtest(reasoner_v2_fixture_test ${PROJECT_SOURCE_DIR}/tools/reasoner/reasoner_v2_fixture_test.cpp)
target_compile_definitions(reasoner_v2_fixture_test
                           PRIVATE KVLENS_REASONER_V2_MODEL="${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner-v2.gguf")
