# The Python package (pyproject.toml, scikit-build-core): `pip install` of the source tree into a virtual
# environment in the build dir, then the Python tests against the installed package from outside the source
# tree (tests/cli/pip_install_test.sh). Reruns reuse the venv, scikit-build-core's build dir (pip-build/) and
# ccache, so only a first run compiles llama.cpp (ccache hits when this tree was built with the same flags).
# Needs network to PyPI on the first run only (the build requirements, numpy, pytest).
kvlens_add_gtest(data_dir_test ${PROJECT_SOURCE_DIR}/src/util/data_dir_test.cpp)

# Not in the sanitizer build (scripts/test.sh --sanitize): pip builds its own, uninstrumented tree.
if(Python3_Interpreter_FOUND AND NOT KVLENS_SANITIZE)
  add_test(NAME python_pip_install
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/pip_install_test.sh ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}
                   ${CMAKE_BINARY_DIR} ${CMAKE_C_COMPILER} ${CMAKE_CXX_COMPILER}
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_pip_install PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;KVLENS_ROUTER=${PROJECT_SOURCE_DIR}/docs/results/router-reasoner/router.json;KVLENS_TEST_MODELS_DIR=${KVLENS_TEST_MODELS_DIR};PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 3600)
endif()

# The same package API from this build tree (<build>/python/kvlens: package files + the extension).
if(TARGET kvlens_python AND Python3_Interpreter_FOUND)
  add_test(NAME python_package
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_package.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_package PROPERTIES
    ENVIRONMENT "PYTHONPATH=${CMAKE_BINARY_DIR}/python;KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    TIMEOUT 600)
endif()
