# The OpenAI-compatible server (src/server, `kvlens serve`).

# Request validation, the reasoning split, base64 floats: the service without HTTP (tiny models); the server's
# API key check.
kvlens_add_gtest(server_api_test ${PROJECT_SOURCE_DIR}/src/service/openai_api_test.cpp)
target_link_libraries(server_api_test PRIVATE kvlens_server)
if(TARGET tiny-models)
  add_dependencies(server_api_test tiny-models)
endif()

# kvlens serve on the reasoning model against the official OpenAI Python client (an independent implementation
# of the protocol): chat (== kvlens generate), streaming (== non-streaming), stop strings, think auto,
# embeddings (== kvlens embed, float and base64), errors, concurrent requests, raw HTTP errors, SIGTERM.
if(Python3_Interpreter_FOUND)
  add_test(NAME python_server_openai
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_server_openai.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_server_openai PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;KVLENS_ROUTER=${PROJECT_SOURCE_DIR}/docs/results/router-reasoner/router.json;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 600)
endif()

# Hardening over HTTP (issue 15): loopback by default, --api-key (401 in OpenAI's shape; health and page open),
# --max-body-bytes (413), request limits (400 naming the parameter), a full --queue (503 with Retry-After),
# --timeout-s (finish_reason length, kvlens.timeout). Each test < 30 s.
if(Python3_Interpreter_FOUND)
  add_test(NAME python_server_hardening
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_server_hardening.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_server_hardening PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;KVLENS_TEST_MODELS_DIR=${KVLENS_TEST_MODELS_DIR};PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
endif()

# The Python bindings (python/kvlens_module.cpp): kv() == kvlens dump, Api.chat == kvlens generate,
# streaming == non-streaming, embeddings == kvlens embed, errors as kvlens.Error with the parameter, threads.
if(TARGET kvlens_python AND Python3_Interpreter_FOUND)
  add_test(NAME python_bindings
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_bindings.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_bindings PROPERTIES
    ENVIRONMENT "PYTHONPATH=${CMAKE_BINARY_DIR}/python;KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;KVLENS_ROUTER=${PROJECT_SOURCE_DIR}/docs/results/router-reasoner/router.json;KVLENS_TEST_MODELS_DIR=${KVLENS_TEST_MODELS_DIR};PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 600)
endif()

# Continuous batching (issue 14): greedy requests alone, then 8 at once on 4 slots (ids and cells reused),
# streaming with scores, stop strings and dropped clients mixed in: same tokens, scores within float tolerance;
# a single request equals kvlens generate --scores.
if(Python3_Interpreter_FOUND)
  add_test(NAME python_server_batching
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_server_batching.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_server_batching PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
endif()

# Load and faults (issue 15): 8 clients for 20 s mixing every route and kind of request with slow, dropping,
# malformed and oversized clients; no 5xx, greedy answers equal to alone, descriptors back, clean SIGTERM.
if(Python3_Interpreter_FOUND)
  add_test(NAME python_server_load
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_server_load.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_server_load PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;KVLENS_ROUTER=${PROJECT_SOURCE_DIR}/docs/results/router-reasoner/router.json;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
endif()

# Batch-invariant serving (issue 14): on SmolLM2, whose greedy tokens the default batched kernels change, 16
# concurrent requests on 4 slots with --batch-invariant give each request's text and scores alone, to the bit;
# without the flag some differ (the control).
if(Python3_Interpreter_FOUND)
  add_test(NAME python_server_batch_invariant
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_server_batch_invariant.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_server_batch_invariant PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_SMOLLM2=${KVLENS_SMOLLM2_PATH};PYTHONDONTWRITEBYTECODE=1"
    FIXTURES_REQUIRED smollm2
    LABELS python
    TIMEOUT 900
    # Alone: a server with 2 spinning threads beside another test (pip's compile in a CI run) slowed 16
    # requests on 4 slots past the client's timeout.
    RUN_SERIAL TRUE)
endif()
