# KVClassifier / router (src/methods/router.*): difficulty labels, feature config and pooling, the MLP and its
# training, the router file, the routing / switching policy. No model needed.
kvlens_add_gtest(router_test ${PROJECT_SOURCE_DIR}/src/methods/router_test.cpp)

# numpy reference (tests/python/router_ref.py): forward pass, one minibatch's gradient, AdamW steps and a
# saved router's predictions, from the dump the gtest RouterRef.Dump writes.
if(Python3_Interpreter_FOUND)
  # --noconftest: this check needs numpy only, not the model-reading fixtures of tests/python/conftest.py.
  add_test(NAME python_router_reference
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_router_reference.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_router_reference PROPERTIES
    ENVIRONMENT "KVLENS_ROUTER_TEST_BIN=$<TARGET_FILE:router_test>;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 300)
else()
  message(WARNING "kvlens: no Python 3 interpreter found; the test python_router_reference is not registered")
endif()
