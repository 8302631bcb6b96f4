# Evaluation building blocks (src/eval): metrics, answer matchers, datasets as configuration. No llama.cpp code.
kvlens_add_gtest(metrics_test ${PROJECT_SOURCE_DIR}/src/eval/metrics_test.cpp)
kvlens_add_gtest(split_test ${PROJECT_SOURCE_DIR}/src/eval/split_test.cpp)
kvlens_add_gtest(matchers_test ${PROJECT_SOURCE_DIR}/src/eval/matchers_test.cpp)
kvlens_add_gtest(relabel_test ${PROJECT_SOURCE_DIR}/src/eval/relabel_test.cpp)
# Reads the built-in configs and the JSONL copies in ${PROJECT_SOURCE_DIR}/data.
kvlens_add_gtest(dataset_test ${PROJECT_SOURCE_DIR}/src/eval/dataset_test.cpp)

# Test-only tool: the C++ metrics as JSON lines, for the scikit-learn comparison below.
add_executable(metrics-ref ${PROJECT_SOURCE_DIR}/tools/metrics_ref/metrics_ref.cpp)
set_target_properties(metrics-ref PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
target_link_libraries(metrics-ref PRIVATE kvlens nlohmann_json::nlohmann_json)
target_compile_options(metrics-ref PRIVATE ${KVLENS_WARNINGS})

# AUROC / AUPR / ROC points / FPR95 / bootstrap vs scikit-learn (tests/python/requirements.txt).
if(Python3_Interpreter_FOUND)
  # --noconftest: this check needs numpy and scikit-learn only, not the model fixtures of conftest.py.
  add_test(NAME python_metrics_reference
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_metrics_reference.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_metrics_reference PROPERTIES
    ENVIRONMENT "KVLENS_METRICS_REF=$<TARGET_FILE:metrics-ref>;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
else()
  message(WARNING "kvlens: no Python 3 interpreter found; the test python_metrics_reference is not registered")
endif()
