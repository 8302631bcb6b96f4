#!/usr/bin/env bash
# Configures and builds kvlens in build/ (llama.cpp is fetched and verified on first configure, cached in
# ${KVLENS_CACHE_DIR:-~/.cache/kvlens}; ccache makes rebuilds from a clean clone fast).
# Extra arguments go to cmake, e.g. -DKVLENS_LLAMA_SOURCE_DIR=/path/to/llama.cpp or -DKVLENS_NATIVE=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${KVLENS_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVLENS_PYTHON=ON "$@"
cmake --build "$build" -j "$(nproc)"
