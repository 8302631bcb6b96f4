#!/usr/bin/env bash
# Fresh machine to first answer: installs dependencies, fetches and builds llama.cpp and kvlens, fetches
# SmolLM2-135M-Instruct, asks it a question and writes its pooled per-layer KV features.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
model=$(bash scripts/fetch_model.sh | tail -n 1)
mkdir -p out
echo "== kvlens generate (SmolLM2-135M-Instruct, greedy) =="
./build/bin/kvlens generate -m "$model" -p "What is the capital of France? Answer in one sentence." \
    -n 64 --features out/demo-features.jsonl
