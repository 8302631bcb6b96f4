# Sharded evaluation (src/eval/shard.*, src/eval/merge.*): --shard I/N on eval coe / eval sample and
# kvlens eval merge.
kvlens_add_gtest(shard_test ${PROJECT_SOURCE_DIR}/src/eval/shard_test.cpp)

# eval coe (2 and 3 shards) and eval sample (2 shards) merged equal the one-machine run; merge refusals.
add_test(NAME cli_shard_merge
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/shard_merge_test.sh $<TARGET_FILE:kvlens-cli>
                 ${KVLENS_TEST_MODELS_DIR}/tiny-llama.gguf)
set_tests_properties(cli_shard_merge PROPERTIES LABELS cli TIMEOUT 600)
