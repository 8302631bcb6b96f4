# Sharded evaluation (src/eval/shard.*, src/eval/merge.*): --shard I/N on eval coe, eval sample, eval embed,
# router label and router eval, and kvlens eval merge.
kvlens_add_gtest(shard_test ${PROJECT_SOURCE_DIR}/src/eval/shard_test.cpp)

# eval coe (2 and 3 shards) and eval sample (2 shards) merged equal the one-machine run; merge refusals.
add_test(NAME cli_shard_merge
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/shard_merge_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR}/tiny-llama.gguf)
set_tests_properties(cli_shard_merge PROPERTIES LABELS cli TIMEOUT 600)

# router label (3 shards), router eval and eval embed (2 shards) merged equal the one-machine run, on the
# project's reasoning model; an eval embed shard resumes; merge refusals of these kinds.
add_test(NAME cli_shard_merge_router_embed
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/shard_merge_router_embed_test.sh $<TARGET_FILE:kvlens-cli>
                 ${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf
                 ${PROJECT_SOURCE_DIR}/docs/results/router-reasoner/router.json ${PROJECT_SOURCE_DIR}/data)
set_tests_properties(cli_shard_merge_router_embed PROPERTIES LABELS cli TIMEOUT 300)
