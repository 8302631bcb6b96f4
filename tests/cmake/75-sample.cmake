# Sampling with KV-CoE (src/methods/{sampling,selection,calibration}.*, src/eval/sample_eval.*): N samples of
# one prompt sharing its KV prefix, best-of-N / voting / abstention, calibration, and `kvlens sample`,
# `kvlens calibrate`, `kvlens eval sample`.
kvlens_add_gtest(selection_test ${PROJECT_SOURCE_DIR}/src/methods/selection_test.cpp)
kvlens_add_gtest(calibration_test ${PROJECT_SOURCE_DIR}/src/methods/calibration_test.cpp)
kvlens_add_gtest(sampling_test ${PROJECT_SOURCE_DIR}/src/methods/sampling_test.cpp)
if(TARGET tiny-models)
  add_dependencies(sampling_test tiny-models)
endif()

# kvlens generate --calibration FILE|auto: P(correct) printed and in the --features line; a logistic file
# (fitted on an eval coe run) in generate and sample, refused for another model.
add_test(NAME cli_generate_calibration
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/generate_calibration_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR}/tiny-llama.gguf)
set_tests_properties(cli_generate_calibration PROPERTIES LABELS cli TIMEOUT 300)

# kvlens calibrate --method logistic vs scikit-learn's LogisticRegression, end to end through the CLI.
if(Python3_Interpreter_FOUND)
  add_test(NAME python_calibration_reference
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_calibration_reference.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  # One BLAS thread: spinning numpy threads slow the tests beside them (see 30-python.cmake).
  set_tests_properties(python_calibration_reference PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;OPENBLAS_NUM_THREADS=1;OMP_NUM_THREADS=1;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
endif()

# kvlens eval sample --part dev|test: the questions of one part of eval coe's split (FNV-1a recomputed in
# Python), the part in the run identity, bad values refused.
add_test(NAME cli_sample_part
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/sample_part_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR}/tiny-llama.gguf)
set_tests_properties(cli_sample_part PROPERTIES LABELS cli TIMEOUT 300)
