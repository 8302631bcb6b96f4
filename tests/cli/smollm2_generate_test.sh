#!/usr/bin/env bash
# SmolLM2-135M-Instruct through the CLI: a simple ChatML question gets a sensible answer, and --features
# writes what the README promises (30 layers x 384 floats for K;V of 3 KV heads x 64 dims).
set -euo pipefail
bin=$1 model=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$("$bin" generate -m "$model" -p "What is the capital of France?" -n 48 --features "$tmp/f.jsonl" 2>"$tmp/err")
echo "answer: $out"
grep -q "Paris" <<<"$out" || { echo "FAIL: the answer does not mention Paris"; exit 1; }
python3 - "$tmp/f.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 1, rows
r = rows[0]
assert r["n_layer"] == 30 and r["kv_width"] == 192 and r["width"] == 384 and r["n_vectors"] == 30, r
assert len(r["vectors"]) == 30 and all(len(v) == 384 for v in r["vectors"])
# mean over the generated tokens that were fed back: all but the last generated token
assert r["pooling"]["n_positions"] == len(r["output_tokens"]) - 1, (r["pooling"], len(r["output_tokens"]))
assert r["template"] == "chatml" and r["stop"] == "end_of_turn", r
print("features ok:", r["n_vectors"], "x", r["width"], "over", r["pooling"]["n_positions"], "positions")
PY
