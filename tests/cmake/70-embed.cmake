# KV embeddings (src/methods/embed) and their evaluation (src/eval/probe, src/eval/embed_eval).

# Preset == pooling algebra by hand on recorded rows; L2 norm; alone == inside a batch; bad texts (tiny models).
kvlens_add_gtest(embed_test ${PROJECT_SOURCE_DIR}/src/methods/embed_test.cpp)
if(TARGET tiny-models)
  add_dependencies(embed_test tiny-models)
endif()
# Probe, folds, macro-F1, task configs: no model.
kvlens_add_gtest(probe_test ${PROJECT_SOURCE_DIR}/src/eval/probe_test.cpp)

# kvlens embed on a file with an empty line, an overlong line and invalid UTF-8: the other lines come out.
add_test(NAME cli_embed_bad_input
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/embed_bad_input_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR}/tiny-llama.gguf)
set_tests_properties(cli_embed_bad_input PROPERTIES LABELS cli TIMEOUT 300)

# Test-only tool: fits the probe on JSON input and prints probabilities and macro-F1, for scikit-learn.
add_executable(probe-ref ${PROJECT_SOURCE_DIR}/tools/probe_ref/probe_ref.cpp)
set_target_properties(probe-ref PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
target_link_libraries(probe-ref PRIVATE kvlens nlohmann_json::nlohmann_json)
target_compile_options(probe-ref PRIVATE ${KVLENS_WARNINGS})

if(Python3_Interpreter_FOUND)
  add_test(NAME python_probe_reference
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_probe_reference.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_probe_reference PROPERTIES
    ENVIRONMENT "KVLENS_PROBE_REF=$<TARGET_FILE:probe-ref>;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
endif()
