#!/usr/bin/env bash
# kvlens router label -> train -> eval and generate --think auto, end to end on the tiny random qwen3 model
# (the commands a user runs on Qwen3-8B, unchanged), resuming, and the refusals: a router for another model,
# a missing or malformed router file, --think auto without a router.
# Usage: router_test.sh KVLENS TEST_MODELS_DIR REASONER_GGUF
set -u
KVLENS=$1
QWEN3=$2/tiny-qwen3.gguf
LLAMA=$2/tiny-llama.gguf
REASONER=$3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
one_line_error() {  # exit status != 0, one line on stderr that contains $2
    local rc=$1 want=$2
    [ "$rc" != 0 ] || fail "expected a failure for: $want"
    [ "$(wc -l < "$T/err")" = 1 ] || { cat "$T/err"; fail "expected one line of error for: $want"; }
    grep -q -- "$want" "$T/err" || { cat "$T/err"; fail "error does not say: $want"; }
}

for i in 1 2 3 4 5 6 7 8; do
    echo "{\"question\": \"What is $i+$((i * 7))?\", \"answer\": \"$((i + i * 7))\", \"level\": $(( (i - 1) / 4 + 1 ))}"
done > "$T/q.jsonl"
cat > "$T/q.json" <<JSON
{"name": "tiny-q", "file": "q.jsonl", "question_field": "question", "answer_field": "answer",
 "group_field": "level", "prompt_template": "{question}", "matcher": "number_after_answer", "max_tokens": 12}
JSON

# label: both modes for every question, features of 2 x KV width (2 KV heads x 16) = 64 floats.
"$KVLENS" router label -m "$QWEN3" --dataset "$T/q.json" -o "$T/labels" -t 2 2> "$T/err" \
    || { cat "$T/err"; fail "router label"; }
[ "$(wc -l < "$T/labels/labels.jsonl")" = 8 ] || fail "expected 8 labelled questions"
python3 - "$T/labels/labels.jsonl" <<'PY' || fail "labels.jsonl content"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    assert len(r["features"]) == 64, len(r["features"])
    assert r["label"] in (0, 25, 75, 100)
    want = 0 if r["fast"]["correct"] else (75 if r["slow"]["correct"] else 100)  # answers here are short
    assert r["label"] == want, r
    assert r["fast"]["n_generated"] <= 12 and r["slow"]["n_generated"] <= 12
    assert r["group"] in ("1", "2")
PY
grep -qE "\| \*\*all\*\* +\| +8 \|" "$T/labels/report.md" || { cat "$T/labels/report.md"; fail "label report"; }
# Resume: nothing to do; other settings: refused.
"$KVLENS" router label -m "$QWEN3" --dataset "$T/q.json" -o "$T/labels" -t 2 2> "$T/err" || fail "resume"
[ "$(wc -l < "$T/labels/labels.jsonl")" = 8 ] || fail "resume added lines"
"$KVLENS" router label -m "$QWEN3" --dataset "$T/q.json" -o "$T/labels" --preset 64/4 2> "$T/err"
one_line_error $? "run.json"

# train
"$KVLENS" router train --labels "$T/labels" -o "$T/router.json" --epochs 20 > "$T/out" 2> "$T/err" \
    || { cat "$T/err"; fail "router train"; }
grep -q '"format": *"kvlens-router"' "$T/router.json" || fail "router file format"
[ -s "$T/router.json.md" ] || fail "no training report"

# Windows along the answers (label --windows 4), and training on them (train --windows all).
"$KVLENS" router label -m "$QWEN3" --dataset "$T/q.json" -o "$T/labels-w" --windows 4 -t 2 2> "$T/err" \
    || { cat "$T/err"; fail "router label --windows"; }
python3 - "$T/labels-w/labels.jsonl" "$T/labels/labels.jsonl" <<'PY' || fail "windows in labels.jsonl"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
plain = {r["index"]: r for r in map(json.loads, open(sys.argv[2]))}
assert len(rows) == 8
for r in rows:
    # The probes do not change the answers or the prompt's features.
    p = plain[r["index"]]
    assert r["fast"]["output"] == p["fast"]["output"] and r["slow"]["output"] == p["slow"]["output"]
    assert r["features"] == p["features"]
    fed = {m: r[m]["n_sampled"] - (1 if r[m]["stop"] == "end_of_turn" else 0) for m in ("fast", "slow")}
    fast = [w for w in r["windows"] if w["mode"] == "fast"]
    slow = [w for w in r["windows"] if w["mode"] == "slow"]
    assert [w["at"] for w in fast] == list(range(4, fed["fast"] + 1, 4)), (fast, r["fast"])
    assert all(w["label"] == r["label"] and len(w["features"]) == 64 for w in fast)
    for w in slow:
        assert w["in_think"] and "cut" in w, w
        want = 0 if w["cut"]["correct"] and w["cut"]["tokens"] < 128 else (75 if r["slow"]["correct"] else 100)
        assert w["label"] == want, w
PY
grep -q "Windows every 4" "$T/labels-w/report.md" || { cat "$T/labels-w/report.md"; fail "window report"; }
# A record with a field missing (another version, a hand edit): a one-line error naming the file.
cp -r "$T/labels-w" "$T/labels-bad"
python3 - "$T/labels-bad/labels.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
del rows[3]["slow"]["n_sampled"]
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
"$KVLENS" router label -m "$QWEN3" --dataset "$T/q.json" -o "$T/labels-bad" --windows 4 -t 2 2> "$T/err"
one_line_error $? "labels-bad/labels.jsonl': a record lacks a field"
# The oracle rows of the report, recomputed from labels.jsonl.
python3 - "$T/labels-w/labels.jsonl" "$T/labels-w/report.md" <<'PY' || fail "oracle rows"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n = len(rows)
route = sum((r["fast"] if r["fast"]["correct"] else r["slow"])["n_generated"] for r in rows) / n
best = []
for r in rows:
    opts = [r[m]["n_generated"] for m in ("fast", "slow") if r[m]["correct"]]
    opts += [w["at"] + w["cut"]["switch_tokens"] + w["cut"]["tokens"] for w in r["windows"]
             if "cut" in w and w["cut"]["correct"]]
    best.append(min(opts) if opts else r["fast"]["n_generated"])
report = open(sys.argv[2]).read()
def row(name):
    line = next(l for l in report.splitlines() if l.startswith("| " + name))
    return [c.strip() for c in line.strip("|").split("|")]
assert abs(float(row("oracle routing (fast")[2]) - route) < 0.051, (row("oracle routing (fast"), route)
assert abs(float(row("oracle routing + switching")[2]) - sum(best) / n) < 0.051
PY
"$KVLENS" router train --labels "$T/labels-w" -o "$T/router-w.json" --windows all --epochs 5 > "$T/out" \
    2> "$T/err" || { cat "$T/err"; fail "router train --windows all"; }
grep -q "windows along answers" "$T/router-w.json.md" || fail "no window rows in the training report"
"$KVLENS" router train --labels "$T/labels" -o "$T/r.json" --windows all 2> "$T/err"
one_line_error $? "has no windows"

# eval: four modes per question.
"$KVLENS" router eval -m "$QWEN3" --router "$T/router.json" --dataset "$T/q.json" -o "$T/eval" -t 2 \
    --check-every 4 2> "$T/err" || { cat "$T/err"; fail "router eval"; }
[ "$(wc -l < "$T/eval/eval.jsonl")" = 8 ] || fail "expected 8 evaluated questions"
for m in always_fast always_slow routed routed_switch; do
    grep -qE "\| $m +\|" "$T/eval/report.md" || { cat "$T/eval/report.md"; fail "no row for $m"; }
done
grep -q "<svg" "$T/eval/accuracy-vs-tokens.svg" || fail "no SVG"

# generate --think auto reports the route.
"$KVLENS" generate -m "$QWEN3" -p "What is 2+2?" --think auto --router "$T/router.json" -n 8 -t 2 \
    --route-log "$T/route.jsonl" > "$T/out" 2> "$T/err" || { cat "$T/err"; fail "generate --think auto"; }
grep -q "router d=.* -> \(fast\|slow\)" "$T/err" || { cat "$T/err"; fail "no route report"; }
grep -q '"n_generated"' "$T/route.jsonl" || fail "no route log"

# The training-free peers as rows beside the four modes, on the reasoning model (which thinks): budget:N
# closes the think block after N think tokens, deer:0 keeps its first trial, deer:2 none (so its answer is
# always-slow's), and every token is counted, trial tokens included.
RROUTER=$(dirname "$REASONER")/../../docs/results/router-reasoner/router.json
for i in 1 2 3; do
    echo "{\"question\": \"What is $((i * 37))+$((i * 71))?\", \"answer\": \"$((i * 108))\", \"level\": $i}"
done > "$T/r.jsonl"
cat > "$T/r.json" <<JSON
{"name": "tiny-r", "file": "r.jsonl", "question_field": "question", "answer_field": "answer",
 "group_field": "level", "prompt_template": "{question}", "matcher": "last_number", "max_tokens": 200}
JSON
"$KVLENS" router eval -m "$REASONER" --router "$RROUTER" --dataset "$T/r.json" -o "$T/peers" -t 2 \
    --budgets 8 --deer 0,2 --deer-trial-tokens 16 2> "$T/err" || { cat "$T/err"; fail "router eval --budgets --deer"; }
for m in budget:8 deer:0 deer:2; do
    grep -qE "\| $m +\|" "$T/peers/report.md" || { cat "$T/peers/report.md"; fail "no row for $m"; }
done
grep -q "wall-clock / always-slow" "$T/peers/report.md" || fail "no wall-clock ratio"
python3 - "$T/peers/eval.jsonl" <<'PY' || fail "peer rows' counts"
import json, sys
for r in map(json.loads, open(sys.argv[1])):
    slow = r["always_slow"]
    for m in ("always_slow", "budget:8", "deer:0", "deer:2"):
        j = r[m]
        assert j["n_generated"] == j["n_sampled"] + j["n_switch_tokens"] + j["n_trial"], (m, j)
    b = r["budget:8"]
    assert b["exit"] == "budget" and b["n_think"] == 8 and b["n_trial"] == 0, b
    if b["stop"] == "end_of_turn":  # the prompt, each fed token, the appended close
        assert b["n_decode_calls"] == 1 + (b["n_sampled"] - 1) + 1, b
    d0 = r["deer:0"]
    assert d0["exit"] == "deer" and d0["n_trials"] == 1 and d0["n_trial"] > 0, d0
    d2 = r["deer:2"]
    assert d2["exit"] == "model" and d2["n_trials"] > 0 and d2["n_trial"] > 0, d2
    assert d2["output"] == slow["output"] and d2["n_sampled"] == slow["n_sampled"], (d2, slow)
    assert d2["n_generated"] == slow["n_generated"] + d2["n_trial"]
    assert d2["n_decode_calls"] > slow["n_decode_calls"]
PY
"$KVLENS" router eval -m "$REASONER" --router "$RROUTER" --dataset "$T/r.json" -o "$T/peers2" --budgets 0 \
    2> "$T/err"
one_line_error $? "budgets"

# generate --think budget:N | deer[:T] reports how the think block ended and the cost.
"$KVLENS" generate -m "$REASONER" -p "What is 37+71?" --think budget:5 -n 100 -t 2 --route-log "$T/b.jsonl" \
    > "$T/out" 2> "$T/err" || { cat "$T/err"; fail "generate --think budget:5"; }
grep -q "budget:5: think block ended by budget" "$T/err" || { cat "$T/err"; fail "no budget report"; }
python3 -c "import json,sys; c=json.loads(open(sys.argv[1]).readline())['cost']; assert c['n_think_tokens']==5 and c['think']=='budget:5', c" \
    "$T/b.jsonl" || fail "budget route log"
"$KVLENS" generate -m "$REASONER" -p "What is 37+71?" --think deer:0 -n 100 -t 2 > "$T/out" 2> "$T/err" \
    || { cat "$T/err"; fail "generate --think deer:0"; }
grep -q "deer:0: think block ended by deer; .* in 1 trial" "$T/err" || { cat "$T/err"; fail "no deer report"; }
"$KVLENS" generate -m "$REASONER" -p "hi" --think budget:0 2> "$T/err"
one_line_error $? "--think: 'budget:0': the budget must be"
"$KVLENS" generate -m "$REASONER" -p "hi" --think deer --raw 2> "$T/err"
one_line_error $? "needs the chat template"

# A model without thinking (tiny llama3) made hybrid by its dataset's prompt texts, and --part: the dev and
# test parts of a split by id partition the questions and equal eval/split.h's FNV-1a rule (numpy-free
# reference below); the prompted fast answers start with the fast text.
for i in $(seq 1 12); do
    echo "{\"id\": \"q$i\", \"question\": \"What is $i+1?\", \"answer\": \"$((i + 1))\"}"
done > "$T/h.jsonl"
cat > "$T/h.json" <<'JSON'
{"name": "tiny-h", "file": "h.jsonl", "question_field": "question", "answer_field": "answer",
 "prompt_template": "{question}", "matcher": "number_after_answer", "max_tokens": 8,
 "hybrid": {"fast": "Answer: ", "slow": "", "close": "\nAnswer: ", "marker": "Answer:"}}
JSON
"$KVLENS" router label -m "$LLAMA" --dataset "$T/q.json" -o "$T/nohybrid" 2> "$T/err"
one_line_error $? "has no thinking mode; fast/slow routing needs a hybrid reasoning model"
for part in dev test; do
    "$KVLENS" router label -m "$LLAMA" --dataset "$T/h.json" -o "$T/h-$part" --part $part --windows 2 -t 2 \
        2> "$T/err" || { cat "$T/err"; fail "router label --part $part on a prompted hybrid"; }
done
python3 - "$T/h-dev/labels.jsonl" "$T/h-test/labels.jsonl" <<'PY' || fail "prompted hybrid labels / --part"
import json, sys
def part(i, frac=0.3):  # FNV-1a 64, as eval/split.h
    h = 14695981039346656037
    for b in i.encode():
        h = ((h ^ b) * 1099511628211) % (1 << 64)
    return "dev" if h % 10000 < frac * 10000 else "test"
dev = [json.loads(l) for l in open(sys.argv[1])]
test = [json.loads(l) for l in open(sys.argv[2])]
ids = sorted(r["id"] for r in dev + test)
assert ids == sorted(f"q{i}" for i in range(1, 13)), ids
assert dev and test
for name, rows in (("dev", dev), ("test", test)):
    for r in rows:
        assert part(r["id"]) == name, (r["id"], name)
        assert r["fast"]["output"].startswith("Answer: "), r["fast"]["output"]
        assert r["fast"]["n_think"] == 0 and r["slow"]["n_think"] >= 1, r
        for w in r["windows"]:
            if "cut" in w:
                assert w["cut"]["switch_tokens"] >= 2, w
PY
grep -q '"hybrid"' "$T/h-dev/run.json" && grep -q '"part"' "$T/h-dev/run.json" || fail "run.json: hybrid, part"
"$KVLENS" router label -m "$LLAMA" --dataset "$T/h.json" -o "$T/h-dev" --part test 2> "$T/err"
one_line_error $? "run.json"
"$KVLENS" router label -m "$LLAMA" --dataset "$T/h.json" -o "$T/h-x" --part train 2> "$T/err"
one_line_error $? "--part"

# Refusals.
"$KVLENS" generate -m "$LLAMA" --template qwen3 -p "hi" --think auto --router "$T/router.json" 2> "$T/err"
one_line_error $? "was trained for qwen3"
"$KVLENS" router eval -m "$REASONER" --router "$T/router.json" --dataset "$T/q.json" -o "$T/e2" 2> "$T/err"
one_line_error $? "was trained for qwen3"
"$KVLENS" generate -m "$QWEN3" -p "hi" --think auto 2> "$T/err"
one_line_error $? "needs --router"
"$KVLENS" generate -m "$QWEN3" -p "hi" --think auto --router "$T/missing.json" 2> "$T/err"
one_line_error $? "missing.json"
echo "not json" > "$T/bad.json"
"$KVLENS" generate -m "$QWEN3" -p "hi" --think auto --router "$T/bad.json" 2> "$T/err"
one_line_error $? "bad.json"
"$KVLENS" router train --labels "$T/nowhere" -o "$T/r2.json" 2> "$T/err"
one_line_error $? "nowhere"
echo "PASS"
