# Installed data: the dataset-config lookup (src/util/data_dir.h).
kvlens_add_gtest(data_dir_test ${PROJECT_SOURCE_DIR}/src/util/data_dir_test.cpp)

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
