# Integration tests of the engine and the KV capture on the tiny random models.
kvlens_add_gtest(capture_test ${CMAKE_CURRENT_SOURCE_DIR}/capture_test.cpp)
if(TARGET tiny-models)
  add_dependencies(capture_test tiny-models)
endif()

add_test(NAME cli_bad_input
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/bad_input_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR}/tiny-llama.gguf)
set_tests_properties(cli_bad_input PROPERTIES LABELS cli TIMEOUT 600)

kvlens_add_gtest(generate_test ${PROJECT_SOURCE_DIR}/src/engine/generate_test.cpp)
if(TARGET tiny-models)
  add_dependencies(generate_test tiny-models)
endif()

# kvlens eval coe: killed half-way, rerun, every sample exactly once.
add_test(NAME cli_eval_resume
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/eval_resume_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR}/tiny-qwen3.gguf)
set_tests_properties(cli_eval_resume PROPERTIES LABELS cli TIMEOUT 600)

# --kv-source graph|cache through kvlens generate --features (flash attention on and off).
add_test(NAME cli_kv_source
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/kv_source_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR}/tiny-qwen2.gguf)
set_tests_properties(cli_kv_source PROPERTIES LABELS cli TIMEOUT 300)

# Batch-invariant decoding (src/engine/batch_invariance.h): the refusals on a tiny model, and on SmolLM2 (the
# smollm2 fixture) a sequence's tokens and step statistics bit-identical alone and beside 7 others.
kvlens_add_smollm2_gtest(batch_invariance_test ${PROJECT_SOURCE_DIR}/src/engine/batch_invariance_test.cpp)
