#!/usr/bin/env bash
# The test command: installs what is missing, builds, fetches SmolLM2-135M-Instruct, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
KVLENS_SMOLLM2=$(bash scripts/fetch_model.sh | tail -n 1)
export KVLENS_SMOLLM2
ctest --test-dir "${KVLENS_BUILD_DIR:-build}" --output-on-failure -j 2 "$@"
