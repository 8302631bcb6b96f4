#!/usr/bin/env bash
# Installs what kvlens needs to build and test, from Debian's packages and PyPI. Idempotent and quick when
# everything is there. (llama.cpp and the test model are fetched by the build and scripts/fetch_model.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(build-essential cmake ninja-build git ccache pkg-config nlohmann-json3-dev libcli11-dev libzip-dev
          libgtest-dev python3 python3-pip python3-dev python3-venv pybind11-dev unzip chromium
          clang-14 libclang-rt-14-dev)  # clang: the sanitizer build and the libFuzzer targets (test.sh --sanitize)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install_deps: apt-get install ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${missing[@]}"
fi

# Python: for the independent reference checks in the tests (numpy forward pass, gguf reader, scikit-learn,
# the official OpenAI client against kvlens serve, Playwright driving Debian's chromium on the web page).
if ! python3 -c "import numpy, gguf, pytest, sklearn, openai, playwright" >/dev/null 2>&1; then
    python3 -m pip install -q -r tests/python/requirements.txt
fi
# Ray (with Serve) for kvlens.ray and its test python_ray (tests/python/requirements-ray.txt).
if ! python3 -c "import ray, ray.serve" >/dev/null 2>&1; then
    python3 -m pip install -q -r tests/python/requirements-ray.txt
fi
