# Report output (src/eval/svg_plot.cpp): SVG line plots and Markdown tables. The unit test also writes sample
# plots, which the Python check parses as XML (well-formedness, one path per series, legend texts).
kvlens_add_gtest(svg_plot_test ${PROJECT_SOURCE_DIR}/src/eval/svg_plot_test.cpp)

if(NOT Python3_Interpreter_FOUND)
  message(WARNING "kvlens: no Python 3 interpreter found; the test python_svg_wellformed is not registered")
  return()
endif()
# --noconftest: this check needs only the standard library, not the numpy reference fixtures.
add_test(NAME python_svg_wellformed
         COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                 ${PROJECT_SOURCE_DIR}/tests/python/test_svg_wellformed.py
         WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
set_tests_properties(python_svg_wellformed PROPERTIES
  ENVIRONMENT "KVLENS_SVG_TEST_BIN=$<TARGET_FILE:svg_plot_test>;PYTHONDONTWRITEBYTECODE=1"
  LABELS python
  TIMEOUT 120)
