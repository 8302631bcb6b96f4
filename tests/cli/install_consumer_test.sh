#!/usr/bin/env bash
# `cmake --install` of a built tree into a fresh prefix, then a project outside the tree (tests/consumer/)
# configured with find_package(kvlens) against that prefix only, built and run on a tiny model through the
# public API (<kvlens/kvlens.h>): it must print both CoE scores, the embeddings' and K/V's shapes and the
# status of a missing model. Also: the install tree's layout (the public headers only: no internal header, no
# llama.cpp header), every installed header compiling on its own, the consumer including nothing else, the
# prefix moved after installing (the package is relocatable), the consumer's build never naming the source or
# build tree, and the installed CLI answering --help.
# Usage: install_consumer_test.sh CMAKE BUILD_DIR SOURCE_DIR MODEL.gguf GENERATOR CXX_COMPILER
set -u
CMAKE=$1
BUILD=$2
SRC=$3
MODEL=$4
GEN=$5
CXX=$6
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$CMAKE" --install "$BUILD" --prefix "$T/staged" > "$T/install.log" 2>&1 \
    || { cat "$T/install.log"; fail "cmake --install"; }
# Relocatable: the config finds everything relative to itself.
mv "$T/staged" "$T/prefix"
P=$T/prefix

files="include/kvlens/kvlens.h lib/libkvlens.a lib/cmake/kvlens/kvlensConfig.cmake
       lib/cmake/kvlens/kvlensConfigVersion.cmake bin/kvlens"
# The tree's llama.cpp archives are installed beside kvlens (an installed llama.cpp package is found again
# instead); its headers are not: the public API needs none.
if grep -q "kvlens::llama" "$P/lib/cmake/kvlens/kvlensConfig.cmake" 2> /dev/null; then
    files="$files lib/libllama.a lib/libggml.a lib/libggml-base.a lib/libggml-cpu.a"
fi
for f in $files; do
    [ -e "$P/$f" ] || { find "$P" | sort; fail "not installed: $f"; }
done
[ -x "$P/bin/kvlens" ] || fail "bin/kvlens is not executable"
# The public headers only: exactly those of the source tree's include/kvlens (no internal header of src/,
# none of llama.cpp's).
(cd "$P/include" && find . -type f | sort) > "$T/installed_headers"
(cd "$SRC/include" && find . -type f -name '*.h' | sort) > "$T/public_headers"
diff "$T/public_headers" "$T/installed_headers" > "$T/hdr.diff" \
    || { cat "$T/hdr.diff"; fail "installed headers are not the public ones (< public, > installed)"; }

# Each installed header on its own, with only the prefix's include directory (that of kvlens::kvlens), as C++17
# with warnings as errors.
n=0
while IFS= read -r h; do
    rel=${h#"$P/include/"}
    echo "#include <$rel>" > "$T/one.cpp"
    "$CXX" -std=c++17 -Wall -Wextra -Wpedantic -Werror -fsyntax-only -I "$P/include" "$T/one.cpp" \
        2> "$T/hdr.err" || { cat "$T/hdr.err"; fail "installed header does not compile on its own: $rel"; }
    n=$((n + 1))
done < <(find "$P/include" -name '*.h' | sort)
[ "$n" -ge 1 ] || fail "no kvlens header installed"
# The consumer includes the public API only.
grep -h '^#include' "$SRC"/tests/consumer/*.cpp | grep -v -e '<kvlens/' -e '<[a-z_]*>' \
    && fail "the consumer includes something other than <kvlens/...> and the standard library"

"$CMAKE" -S "$SRC/tests/consumer" -B "$T/build" -G "$GEN" -DCMAKE_CXX_COMPILER="$CXX" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$P" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    > "$T/configure.log" 2>&1 || { cat "$T/configure.log"; fail "configuring the consumer project"; }
grep -q "kvlens 0\.[0-9]*\.[0-9]* from $P/lib/cmake/kvlens" "$T/configure.log" \
    || { cat "$T/configure.log"; fail "find_package(kvlens) did not use the installed prefix"; }
"$CMAKE" --build "$T/build" > "$T/build.log" 2>&1 || { cat "$T/build.log"; fail "building the consumer project"; }
grep -qi "warning" "$T/build.log" && { cat "$T/build.log"; fail "warnings building the consumer project"; }
# Headers and archives come from the prefix, never from the kvlens tree.
for tree in "$SRC/src" "$BUILD"; do
    ! grep -rqF "$tree" "$T/build/compile_commands.json" "$T/build/build.ninja" \
        || fail "the consumer build refers to $tree"
done

"$T/build/kvlens-consumer" "$MODEL" > "$T/out" 2> "$T/err" || { cat "$T/out" "$T/err"; fail "kvlens-consumer"; }
cat "$T/out"
for s in kv_coe_c hs_coe_c; do
    grep -Eq "^$s -?[0-9]+\.[0-9]+$" "$T/out" || fail "no finite $s in the consumer's output"
done
grep -Eq "[1-9][0-9]* tokens generated" "$T/out" || fail "the consumer generated no tokens"
grep -qx "missing model: file" "$T/out" || fail "a missing model file did not give KVLENS_ERR_FILE"
grep -Eq "^kvlens ([0-9]+\.[0-9]+\.[0-9]+) \(header \1\)$" "$T/out" || fail "library and header versions differ"
# tiny-llama: 2 layers, 2 KV heads x 16; embeddings [K;V] heads averaged: 32 floats, L2-normalised.
grep -qx "embeddings 2 x 32, |e0| 1.0000" "$T/out" || fail "the consumer's embeddings"
grep -Eqx "kv 2 x [1-9][0-9]* x 32" "$T/out" || fail "the consumer's K/V"

"$P/bin/kvlens" --help > "$T/help" 2>&1 || { cat "$T/help"; fail "installed kvlens --help"; }
grep -q "generate" "$T/help" || { cat "$T/help"; fail "installed kvlens --help lists no generate command"; }
# The installed CLI finds the dataset configs installed beside it (share/kvlens/configs), not the source tree's.
[ -f "$P/share/kvlens/configs/arith.json" ] || fail "dataset configs not installed"
env -u KVLENS_DATA_DIR "$P/bin/kvlens" eval coe --help > "$T/help" 2>&1
grep -qF -- "--data-dir TEXT=$P/share/kvlens/configs" "$T/help" \
    || { grep -- --data-dir "$T/help"; fail "installed kvlens eval coe does not default to its installed configs"; }
# ... and the built-in datasets' files: an evaluation of a built-in dataset runs from the prefix alone.
env -u KVLENS_DATA_DIR "$P/bin/kvlens" eval coe -m "$MODEL" --dataset arith --limit 2 -n 2 -t 1 --bootstrap 10 \
    -o "$T/eval" > "$T/eval.log" 2>&1 || { tail -3 "$T/eval.log"; fail "installed kvlens eval coe --dataset arith"; }
[ "$(wc -l < "$T/eval/samples.jsonl")" -eq 2 ] || fail "installed eval coe wrote no 2 samples"
[ -f "$P/share/kvlens/README.md" ] || fail "the datasets' licences (data/README.md) not installed"
echo "OK: installed into a prefix ($n public headers), consumer built with find_package(kvlens) and run"
