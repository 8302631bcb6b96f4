#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench` and `llama-server` from the SAME pinned tree kvlens builds on (the
# node-llama-cpp bundle unpacked by cmake/KvlensLlama.cmake into ${KVLENS_CACHE_DIR:-~/.cache/kvlens}), with
# the same CPU flags as kvlens' default build (Release, GGML_NATIVE=ON without AMX and AVX512BW in ggml-cpu,
# static, OpenMP as ggml defaults, no CUDA unless KVLENS_CUDA=ON), into ${BENCH_BUILD_DIR:-build-bench}/llama.cpp.
# The binaries land in <that>/bin. Not part of kvlens' build; only bench/ uses them.
#
#   bash bench/build_llama_tools.sh            (JOBS=N for parallel compile jobs, default 1)
#
# The source tree must exist: a kvlens configure fetches it (bash scripts/build.sh), or pass
# LLAMA_SRC=/path/to/llama.cpp (then it is no longer "the same pinned tree": bench JSON records the commit).
set -euo pipefail
cd "$(dirname "$0")/.."
commit=80fb11ac73e66d89eae2c6a91d8a77428fa733ed  # cmake/KvlensLlama.cmake: KVLENS_LLAMA_COMMIT
grep -q "$commit" cmake/KvlensLlama.cmake || { echo "build_llama_tools.sh: the pin in cmake/KvlensLlama.cmake moved; update $0" >&2; exit 1; }
src=${LLAMA_SRC:-${KVLENS_CACHE_DIR:-$HOME/.cache/kvlens}/llama.cpp-$commit}
[ -f "$src/include/llama.h" ] || { echo "build_llama_tools.sh: no llama.cpp tree at $src (run bash scripts/build.sh once)" >&2; exit 1; }
out=${BENCH_BUILD_DIR:-build-bench}/llama.cpp
native=${KVLENS_NATIVE:-ON}
cuda=${KVLENS_CUDA:-OFF}
cmake -S "$src" -B "$out" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE="$native" -DGGML_CUDA="$cuda" -DGGML_CCACHE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_ALL_WARNINGS=OFF \
    -DCMAKE_PROJECT_llama.cpp_INCLUDE="$PWD/cmake/KvlensGgmlCpuFlags.cmake"  # no AMX/AVX512BW, as kvlens
cmake --build "$out" -j "${JOBS:-1}" --target llama-bench  # first: the smaller one
cmake --build "$out" -j "${JOBS:-1}" --target llama-server
echo "$out/bin/llama-bench"
echo "$out/bin/llama-server"
