#!/usr/bin/env bash
# The front ends (the CLI, the HTTP server, the Python bindings) are the public API's users: each of their
# files includes, of kvlens, only the public header kvlens/kvlens.h, its own front end's headers (cli/,
# server/server.h) and the helpers that hold no engine logic (util/error.h: the exception type; io/npz.h:
# the .npy / .npz writer). An include of an internal layer (engine/, capture/, methods/, eval/, service/,
# api/) is engine logic bypassing the public API: the test names the file and line and fails.
#   frontend_includes_test.sh SOURCE_DIR
set -euo pipefail
src=${1:?source dir}
cd "$src"
allowed='^(kvlens/kvlens\.h|cli/common\.h|server/server\.h|util/error\.h|io/npz\.h)$'
bad=0
n=0
for f in src/cli/*.cpp src/cli/*.h src/server/*.cpp src/server/*.h python/kvlens_module.cpp; do
    n=$((n + 1))
    while IFS=: read -r line inc; do
        name=$(sed -E 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"([^"]*)".*/\1/' <<<"$inc")
        if ! [[ $name =~ $allowed ]]; then
            echo "$f:$line: includes \"$name\", not the public API (kvlens/kvlens.h)"
            bad=1
        fi
    done < <(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" | sed -E 's/^([0-9]+):/\1:/')
done
[ "$n" -gt 10 ] || { echo "only $n front-end files found under $src"; exit 1; }
if [ $bad -ne 0 ]; then
    echo "FAIL: front-end files include internal headers"
    exit 1
fi
echo "ok: $n front-end files include only the public API and non-engine helpers"
