# The web page at / (src/server/page.cpp) in headless Chromium, driven by Playwright for Python: kvlens serve on
# the reasoning model; the page sends a question and shows the streamed thinking, answer and live scores, equal
# to the API's greedy answer; think auto shows the router; one request at a time; errors and the API key shown.
# Reported as skipped (pytest -rs gives the reason) without Playwright or Chromium (scripts/install_deps.sh installs both).
# Writes page.png in the build directory; KVLENS_SCREENSHOT=$PWD/docs/screenshots/page.png regenerates the
# committed screenshot (ctest passes the caller's environment through).
if(Python3_Interpreter_FOUND)
  add_test(NAME python_browser_page
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_page_browser.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_browser_page PROPERTIES
    ENVIRONMENT "KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;KVLENS_ROUTER=${PROJECT_SOURCE_DIR}/docs/results/router-reasoner/router.json;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    SKIP_REGULAR_EXPRESSION "SKIPPED \\[[0-9]+\\] [^\n]*test_page_browser"  # only whole-file skips exist
    TIMEOUT 60)
endif()
