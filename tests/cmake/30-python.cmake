# Python reference check: kvlens dump's K/V/hidden against an independent numpy forward pass
# (tests/python/test_kv_reference.py, reference_forward.py, conftest.py; packages pinned in
# tests/python/requirements.txt). SmolLM2 is fetched by scripts/fetch_model.sh into ${KVLENS_CACHE_DIR}/models
# unless the environment names it (KVLENS_SMOLLM2=<gguf>); KVLENS_ALLOW_SKIP_SMOLLM2=1 turns a missing model
# into a skip. Both pass through from the environment ctest runs in.
if(NOT Python3_Interpreter_FOUND)
  message(WARNING "kvlens: no Python 3 interpreter found; the test python_kv_reference is not registered")
  return()
endif()

add_test(NAME python_kv_reference
         COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider
                 ${PROJECT_SOURCE_DIR}/tests/python/test_kv_reference.py
         WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
set_tests_properties(python_kv_reference PROPERTIES
  ENVIRONMENT "KVLENS_BIN=${CMAKE_BINARY_DIR}/bin/kvlens;KVLENS_TEST_MODELS_DIR=${KVLENS_TEST_MODELS_DIR};KVLENS_CACHE_DIR=${KVLENS_CACHE_DIR};PYTHONDONTWRITEBYTECODE=1"
  LABELS python
  TIMEOUT 900
  # Alone: its numpy (OpenBLAS) threads and a llama.cpp test's threads, all spinning on 2 cores, slowed the
  # tests beside it 100x in CI runs (FastSlow tests 30-60 s instead of 0.3 s).
  RUN_SERIAL TRUE)

# The token-axis KV-CoE against numpy from `kvlens dump` rows (tests/python/test_token_coe_reference.py).
add_test(NAME python_token_coe_reference
         COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider
                 ${PROJECT_SOURCE_DIR}/tests/python/test_token_coe_reference.py
         WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
set_tests_properties(python_token_coe_reference PROPERTIES
  ENVIRONMENT "KVLENS_BIN=${CMAKE_BINARY_DIR}/bin/kvlens;KVLENS_TEST_MODELS_DIR=${KVLENS_TEST_MODELS_DIR};KVLENS_CACHE_DIR=${KVLENS_CACHE_DIR};PYTHONDONTWRITEBYTECODE=1"
  LABELS python
  TIMEOUT 900
  FIXTURES_REQUIRED smollm2
  RUN_SERIAL TRUE)
