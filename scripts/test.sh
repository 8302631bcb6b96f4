#!/usr/bin/env bash
# The test command: installs what is missing, builds, fetches SmolLM2-135M-Instruct, runs every test.
#   bash scripts/test.sh [CTEST ARGS...]              the suite, gcc build in build/
#   bash scripts/test.sh --sanitize [CTEST ARGS...]   the suite under AddressSanitizer + UndefinedBehaviorSanitizer
#       (clang-14, llama.cpp built the same way, in build-asan/), plus the libFuzzer targets' replay and smoke
#       runs; without the Python bindings (an uninstrumented interpreter cannot load an ASan module), so the
#       tests that import them are not registered there.
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=0
if [ "${1:-}" = "--sanitize" ]; then
    sanitize=1
    shift
fi
bash scripts/install_deps.sh
if [ $sanitize -eq 1 ]; then
    export KVLENS_BUILD_DIR=${KVLENS_BUILD_DIR:-build-asan}
    # -g puts the build directory in the objects, and ccache then keys on it: without this a clone in
    # another directory recompiles everything (~15 min on 2 cores).
    export CCACHE_NOHASHDIR=1
    CC=clang-14 CXX=clang++-14 bash scripts/build.sh -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVLENS_SANITIZE=ON \
        -DKVLENS_FUZZ=ON -DKVLENS_PYTHON=OFF
    # Leaks are reported at exit and fail the test; UB stops at the first report (-fno-sanitize-recover).
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
else
    bash scripts/build.sh
fi
KVLENS_SMOLLM2=$(bash scripts/fetch_model.sh | tail -n 1)
export KVLENS_SMOLLM2
ctest --test-dir "${KVLENS_BUILD_DIR:-build}" --output-on-failure -j 2 "$@"
