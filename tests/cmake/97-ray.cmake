# kvlens on Ray (python/kvlens/ray.py; Ray pinned in tests/python/requirements-ray.txt): on a local Ray cluster
# the test starts (127.0.0.1, 2 CPUs, its own temp dir) and stops (ray stop --force, then any process its
# workers left), a sharded eval coe / eval sample equals the one-machine run, a worker killed mid-shard loses
# nothing (retried, resumed), and 2 Serve replicas of kvlens serve answer the OpenAI client as kvlens serve
# alone does. Skipped with the reason when Ray is not installed.
if(TARGET kvlens_python AND Python3_Interpreter_FOUND)
  add_test(NAME python_ray
           COMMAND ${Python3_EXECUTABLE} -m pytest -q -rs -s -p no:cacheprovider --noconftest
                   ${PROJECT_SOURCE_DIR}/tests/python/test_ray.py
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(python_ray PROPERTIES
    ENVIRONMENT "PYTHONPATH=${CMAKE_BINARY_DIR}/python;KVLENS_BIN=$<TARGET_FILE:kvlens-cli>;KVLENS_TEST_MODELS_DIR=${KVLENS_TEST_MODELS_DIR};KVLENS_REASONER_MODEL=${PROJECT_SOURCE_DIR}/tools/reasoner/arith-reasoner.gguf;PYTHONDONTWRITEBYTECODE=1"
    LABELS python
    SKIP_REGULAR_EXPRESSION "SKIPPED \\[[0-9]+\\] [^\n]*test_ray"  # only whole-file skips exist
    # Alone: the cluster takes both cores (and its own Ray processes must not meet another test's).
    RUN_SERIAL TRUE
    TIMEOUT 900)
endif()
