# `cmake --install` + find_package(kvlens) (cmake/KvlensInstall.cmake, cmake/kvlensConfig.cmake.in): installs
# this build into a temporary prefix and builds and runs the consumer project tests/consumer/ against it on
# tiny-llama (tests/cli/install_consumer_test.sh). Needs the whole build (the CLI is installed too). Not in
# the sanitizer build: the consumer is built without -fsanitize, so an ASan library cannot link into it.
if(NOT KVLENS_SANITIZE)
add_test(NAME install_consumer
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/install_consumer_test.sh ${CMAKE_COMMAND} ${CMAKE_BINARY_DIR}
                 ${PROJECT_SOURCE_DIR} ${KVLENS_TEST_MODELS_DIR}/tiny-llama.gguf ${CMAKE_GENERATOR}
                 ${CMAKE_CXX_COMPILER})
set_tests_properties(install_consumer PROPERTIES LABELS cli TIMEOUT 300)
endif()
