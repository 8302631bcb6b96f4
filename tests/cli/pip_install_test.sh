#!/usr/bin/env bash
# pip install of the source tree into a fresh-ish virtual environment, then the Python tests against the
# installed package, run from a directory outside the source tree (so `import kvlens` cannot find the tree).
#   pip_install_test.sh PYTHON SOURCE_DIR BUILD_DIR CC CXX
# The venv (BUILD_DIR/pip-venv) and scikit-build-core's build dir (BUILD_DIR/pip-build) persist between runs:
# a rerun reinstalls incrementally. The build requirements come from PyPI (pinned as in pyproject.toml) and
# the build runs without isolation, so a rerun needs no network. KVLENS_PIP_CLEAN=1 starts from scratch.
# Environment for the tests: KVLENS_BIN, KVLENS_REASONER_MODEL, KVLENS_ROUTER, KVLENS_TEST_MODELS_DIR.
set -euo pipefail
python=$1 src=$2 build=$3
# The CMake build's compilers: scikit-build-core would take Python's (sysconfig: g++, not c++), and ccache
# keys on the compiler's path, so the same path as the CMake build lets the pip build reuse its objects.
export CC=$4 CXX=$5
venv=$build/pip-venv skb=$build/pip-build
if [ "${KVLENS_PIP_CLEAN:-0}" = 1 ]; then rm -rf "$venv" "$skb"; fi

# The build requirements, read from pyproject.toml so that the pins live in one place.
reqs=$("$python" - "$src/pyproject.toml" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
print(" ".join(re.findall(r'"([A-Za-z0-9_.-]+==[^"]+)"', re.search(r"requires = \[(.*?)\]", text).group(1))))
EOF
)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
vpy=$venv/bin/python
# shellcheck disable=SC2086
"$vpy" -m pip install -q --disable-pip-version-check $reqs numpy==2.4.6 pytest==9.2.0 mypy==2.4.1

t0=$(date +%s)
# -C build-dir: scikit-build-core's persistent CMake build dir; ccache (found by CMakeLists.txt) serves
# objects already compiled by other builds of this tree with the same flags.
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$vpy" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
    -C build-dir="$skb" "$src"
echo "pip_install_test: pip install took $(($(date +%s) - t0)) s"

# Outside the source tree; the tests' own directory is not a package, so only the venv can provide kvlens.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$vpy" - "$src" <<'EOF'
import os, sys
import kvlens
# From the venv's site-packages (the venv may live in a build dir inside the tree), not python/kvlens.
where = os.path.realpath(kvlens.__file__)
assert where.startswith(os.path.realpath(sys.prefix) + os.sep), where
assert not where.startswith(os.path.realpath(os.path.join(sys.argv[1], "python")) + os.sep), where
print("pip_install_test: kvlens", kvlens.__version__, "from", os.path.dirname(kvlens.__file__))
EOF
KVLENS_EXPECT_INSTALLED_DATA=1 "$vpy" -m pytest -q -rs -p no:cacheprovider --noconftest "$src/tests/python/test_package.py" \
    "$src/tests/python/test_bindings.py"

# The type stubs: the package type-checks strictly against the extension's stub, and the stub matches the
# extension (stubtest; pybind11's metaclass is the one difference it reports, allowed).
"$vpy" -m mypy --strict --cache-dir "$build/pip-mypy-cache" -p kvlens
printf 'kvlens._kvlens.Api\nkvlens._kvlens.Model\n' > "$work/stubtest-allow"
"$vpy" -m mypy.stubtest --mypy-config-file /dev/null --allowlist "$work/stubtest-allow" kvlens._kvlens
