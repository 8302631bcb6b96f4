#!/bin/bash
# Does llama.cpp's batched decode itself change greedy tokens (no server involved)? The same 24 arith
# questions generated alone (--parallel 1) and 8 at a time (--parallel 8), with one thread and two.
cd "$(dirname "$0")/.."
S=$(bash scripts/fetch_model.sh smollm2-135m | tail -1)
rm -rf ${OUT:-runs/batch-invariance}/t*-p*
for t in 1 2; do for p in 1 8; do
  ./build/bin/kvlens eval coe -m "$S" --dataset arith --limit 24 --parallel $p -t $t -o ${OUT:-runs/batch-invariance}/t$t-p$p > /dev/null 2>&1 || echo "fail $t $p"
done; done
python3 - <<'PY'
import json, os
def toks(d):
    return {json.loads(l)["index"]: json.loads(l)["output_tokens"] for l in open(f"{os.environ.get('OUT', 'runs/batch-invariance')}/{d}/samples.jsonl")}
for t in (1, 2):
    a, b = toks(f"t{t}-p1"), toks(f"t{t}-p8")
    print(f"{t} thread(s): {sum(a[i] != b[i] for i in a)}/{len(a)} answers differ between --parallel 1 and 8")
a, b = toks("t1-p1"), toks("t2-p1")
print(f"--parallel 1: {sum(a[i] != b[i] for i in a)}/{len(a)} differ between 1 and 2 threads")
PY
