kvlens_add_gtest(results_file_test ${PROJECT_SOURCE_DIR}/src/eval/results_file_test.cpp)
