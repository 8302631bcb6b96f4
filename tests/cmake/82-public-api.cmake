# The public API (include/kvlens/kvlens.h, src/api/): generate with scores, think auto, embeddings and K/V
# equal to the internal path and to `kvlens generate --scores`; bad inputs give the documented status.
kvlens_add_gtest(public_api_test ${CMAKE_CURRENT_SOURCE_DIR}/public_api_test.cpp)
target_compile_definitions(public_api_test
                           PRIVATE KVLENS_REASONER_MODEL="${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf")
add_dependencies(public_api_test kvlens-cli)
if(TARGET tiny-models)
  add_dependencies(public_api_test tiny-models)
endif()

# The front ends use the public API only: src/cli, src/server and python/kvlens_module.cpp include no header of
# the engine, capture, methods, evaluation or service layers (tests/cli/frontend_includes_test.sh).
add_test(NAME frontend_includes
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/frontend_includes_test.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(frontend_includes PROPERTIES LABELS "unit;cli" TIMEOUT 60)
