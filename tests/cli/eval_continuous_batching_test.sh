#!/usr/bin/env bash
# eval coe decodes with continuous batching (a finished answer's slot takes the next question at once):
# with batch-invariant kernels every answer, its tokens and every score, is bit-identical to decoding the
# questions one at a time (slots are refilled mid-batch there too, as far as keeping cells in order allows);
# with the default kernels, while questions wait every step is full (each answer that finished before the
# last question joined saw `parallel` sequences at every step of its life), and the per-answer decode
# shares sum to the run's decoding time in the report.
set -euo pipefail
bin=$1 model=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=14 par=3
"$bin" eval coe -m "$model" --dataset arith --limit $n --parallel 1 -t 1 --batch-invariant -o "$tmp/one" 2>"$tmp/err1"
"$bin" eval coe -m "$model" --dataset arith --limit $n --parallel $par -t 1 --batch-invariant -o "$tmp/bi" 2>"$tmp/err2"
"$bin" eval coe -m "$model" --dataset arith --limit $n --parallel $par -t 1 -o "$tmp/cb" 2>"$tmp/err3"
python3 - "$tmp/one" "$tmp/bi" "$tmp/cb" $n $par <<'PY'
import json, re, sys
one_dir, bi_dir, cb_dir, n, par = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rows(d):
    return [json.loads(l) for l in open(f"{d}/samples.jsonl")]
one = {r["index"]: r for r in rows(one_dir)}
bi = {r["index"]: r for r in rows(bi_dir)}
order = rows(cb_dir)
assert sorted(one) == sorted(bi) == sorted(r["index"] for r in order) == list(range(n))
for i in range(n):
    a, b = one[i], bi[i]
    assert a["output_tokens"] == b["output_tokens"], f"answer {i}: tokens differ with --parallel {par}"
    assert a["scores"] == b["scores"] and a["token_grid"] == b["token_grid"], f"answer {i}: scores differ"
lengths = [r["n_output_tokens"] for r in order]
assert len(set(lengths)) > 1, "answers of equal length cannot show the refill"
# Answers are appended as they finish: the k-th finished answer (k < n - par + 1) finished while questions
# were still waiting, so every step of its life was full.
full = [r for r in order[: n - par + 1] if r["mean_batch_size"] != par]
assert not full, [(r["index"], r["mean_batch_size"]) for r in full]
assert all(0 < r["decode_seconds"] <= r["seconds"] for r in order)
total = sum(r["decode_seconds"] for r in order)
m = re.search(r"decoding time: (\d+) s for (\d+) answers", open(f"{cb_dir}/report.md").read())
assert m and int(m.group(2)) == n and abs(int(m.group(1)) - total) <= 0.5 + 1e-9, (m and m.groups(), total)
print(f"continuous batching ok: {n} answers identical to one at a time; lengths {min(lengths)}-{max(lengths)}; "
      f"decode {total:.2f} s")
PY
