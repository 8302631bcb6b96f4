#!/usr/bin/env bash
# kvlens eval sample --part dev|test: only the questions of that part of eval coe's split by question id, the
# first --limit of them in file order; checked against an independent FNV-1a in Python. The part is part of
# the run's identity (a rerun with another part is refused), and a bad --part is refused by name.
# Usage: sample_part_test.sh KVLENS MODEL
set -u
KVLENS=$1
MODEL=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
python3 - "$T" <<'PY'
import json, sys
d = sys.argv[1]
with open(f"{d}/q.jsonl", "w") as f:
    for i in range(40):
        f.write(json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n")
json.dump({"name": "parts", "file": "q.jsonl", "question_field": "question", "answer_field": "answer",
           "prompt_template": "{question}", "matcher": "number_after_answer", "max_tokens": 3},
          open(f"{d}/parts.json", "w"))
PY
run() {  # part out [extra...]
    local part=$1 out=$2
    shift 2
    "$KVLENS" eval sample -m "$MODEL" --dataset "$T/parts.json" -o "$out" --part "$part" --limit 6 --n 1,2 \
        --max-tokens 3 -t 2 "$@"
}
for part in dev test; do
    run $part "$T/$part" > /dev/null 2> "$T/err" || { cat "$T/err"; fail "eval sample --part $part"; }
done
python3 - "$T" <<'PY' || fail "parts"
import json, sys
d = sys.argv[1]
def fnv1a(s):
    h = 14695981039346656037
    for b in s.encode():
        h = ((h ^ b) * 1099511628211) % 2**64
    return h
ids = [f"q{i}" for i in range(40)]
want = {"dev": [i for i in ids if fnv1a(i) % 10000 < 3000][:6],
        "test": [i for i in ids if fnv1a(i) % 10000 >= 3000][:6]}
assert len(want["dev"]) == 6 and len(want["test"]) == 6, want
for part in ("dev", "test"):
    got = [json.loads(l)["id"] for l in open(f"{d}/{part}/samples.jsonl")]
    assert sorted(got, key=lambda s: int(s[1:])) == want[part], (part, got, want[part])
    assert all(len(json.loads(l)["samples"]) == 2 for l in open(f"{d}/{part}/samples.jsonl"))
    report = open(f"{d}/{part}/report.md").read()
    assert f"questions: 6 (the {part} part of the split by question id" in report, report[:600]
print("ok:", want)
PY
# The part is in the run's identity: resuming the dev run as test is refused, and nothing is lost.
before=$(cat "$T/dev/samples.jsonl")
run test "$T/dev" > /dev/null 2> "$T/err" && fail "a rerun with another part was accepted"
[ "$before" = "$(cat "$T/dev/samples.jsonl")" ] || fail "the refused rerun changed samples.jsonl"
# Rerunning with the same part resumes: nothing new is decoded.
run dev "$T/dev" > /dev/null 2> "$T/err" || { cat "$T/err"; fail "resume"; }
[ "$before" = "$(cat "$T/dev/samples.jsonl")" ] || fail "the resumed run changed samples.jsonl"
run train "$T/x" > /dev/null 2> "$T/err" && fail "--part train was accepted"
grep -q -- "--part" "$T/err" || { cat "$T/err"; fail "the --part error does not name the option"; }
echo "ok"

# --rescore: fake an older matcher's reading on one sample of the first question; a plain rerun keeps it and
# warns, --rescore relabels it from the stored output (the first label under relabelled_from) and the report
# counts it.
python3 - "$T/dev/samples.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
s = rows[0]["samples"][0]
s["extracted"], s["matched"], s["correct"] = "fake", not s["matched"], not s["correct"]
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
run dev "$T/dev" > /dev/null 2> "$T/err" || { cat "$T/err"; fail "rerun on a stale label"; }
grep -q "1 of 12 stored answers.*--rescore" "$T/err" || { cat "$T/err"; fail "no stale-label warning"; }
grep -q '"fake"' "$T/dev/samples.jsonl" || fail "a plain rerun changed the stale label"
run dev "$T/dev" --rescore > /dev/null 2> "$T/err" || { cat "$T/err"; fail "--rescore"; }
python3 - "$T/dev/samples.jsonl" <<'PY' || fail "--rescore did not relabel from the stored output"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
s = rows[0]["samples"][0]
assert s["relabelled_from"]["extracted"] == "fake" and s["extracted"] != "fake", s
assert sum("relabelled_from" in x for r in rows for x in r["samples"]) == 1
PY
grep -q "relabelled: 1 of 12 samples" "$T/dev/report.md" || fail "report.md does not count the relabelled sample"
grep -q -- '--rescore"' "$T/dev/run.json" || fail "run.json's command lacks --rescore (as a flag, last)"
echo "ok: eval sample --rescore"
