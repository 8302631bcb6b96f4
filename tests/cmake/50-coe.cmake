# KV-CoE (src/methods/coe.*): scores on chains, the streamed KV and hidden-state chains, probability
# baselines. Unit + integration gtest on the tiny models, and an independent numpy reference of the scores
# driven through the test-only tool coe-ref.

kvlens_add_smollm2_gtest(coe_test ${PROJECT_SOURCE_DIR}/src/methods/coe_test.cpp)

# Chains as JSON lines on stdin -> the C++ scores as JSON lines on stdout.
add_executable(coe-ref ${PROJECT_SOURCE_DIR}/tools/coe_ref/coe_ref.cpp)
set_target_properties(coe-ref PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
target_link_libraries(coe-ref PRIVATE kvlens nlohmann_json::nlohmann_json)
target_compile_options(coe-ref PRIVATE ${KVLENS_WARNINGS})

if(Python3_Interpreter_FOUND)
  # --noconftest: this check needs numpy only, not the model-reading fixtures of tests/python/conftest.py.
  add_test(NAME python_coe_reference
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_coe_reference.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_coe_reference PROPERTIES
    ENVIRONMENT "KVLENS_COE_REF=$<TARGET_FILE:coe-ref>;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
else()
  message(WARNING "kvlens: no Python 3 interpreter found; the test python_coe_reference is not registered")
endif()

# eval coe's report (write_coe_report: dev/test split, test-part metrics, the configuration chosen on dev,
# the combined logistic model) recomputed with numpy and scikit-learn from a run on tiny-llama whose
# samples.jsonl is rewritten with synthetic records (tests/python/test_coe_report_reference.py). Seconds.
if(Python3_Interpreter_FOUND)
  add_test(NAME python_coe_report_reference
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_coe_report_reference.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  # One BLAS thread: spinning numpy threads slow the tests beside them (see 30-python.cmake).
  set_tests_properties(python_coe_report_reference PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_TEST_MODELS_DIR=${KVLENS_TEST_MODELS_DIR};OPENBLAS_NUM_THREADS=1;OMP_NUM_THREADS=1;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
else()
  message(WARNING
          "kvlens: no Python 3 interpreter found; the test python_coe_report_reference is not registered")
endif()

# The answer line's confidence (src/methods/answer_line.*): which tokens, geometric mean and minimum by hand.
kvlens_add_gtest(answer_line_test ${PROJECT_SOURCE_DIR}/src/methods/answer_line_test.cpp)
