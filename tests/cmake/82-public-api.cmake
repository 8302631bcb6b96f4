# The public API (include/kvlens/kvlens.h, src/api/): generate with scores, think auto, embeddings and K/V
# equal to the internal path and to `kvlens generate --scores`; bad inputs give the documented status.
kvlens_add_gtest(public_api_test ${CMAKE_CURRENT_SOURCE_DIR}/public_api_test.cpp)
target_compile_definitions(public_api_test
                           PRIVATE KVLENS_REASONER_MODEL="${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf")
add_dependencies(public_api_test kvlens-cli)
if(TARGET tiny-models)
  add_dependencies(public_api_test tiny-models)
endif()
