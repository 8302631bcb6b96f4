#!/usr/bin/env bash
# kvlens generate --calibration: the answer's P(correct) from a calibration fitted by kvlens calibrate, given
# as a file or found next to the model ('auto'), printed and added to the --features line.
# Usage: generate_calibration_test.sh KVLENS MODEL
set -u
KVLENS=$1
MODEL=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
# A labelled run where a higher max_prob means correct: Platt gives P rising with the score.
python3 - "$T/run.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(40):
        s = i / 40
        f.write(json.dumps({"scores": {"max_prob": s}, "correct": (i * 7919) % 40 < i}) + "\n")
PY
"$KVLENS" calibrate --from "$T/run.jsonl" --score max_prob --method platt -o "$T/cal.json" > /dev/null 2> "$T/err" \
    || { cat "$T/err"; fail "calibrate"; }
"$KVLENS" generate -m "$MODEL" -p "Hello" -n 6 -t 2 --calibration "$T/cal.json" --features "$T/f.jsonl" \
    > /dev/null 2> "$T/err" || { cat "$T/err"; fail "generate --calibration"; }
grep -q "kvlens: p_correct.max_prob = 0\.[0-9]* (raw max_prob = " "$T/err" || { cat "$T/err"; fail "no P(correct) line"; }
python3 - "$T/f.jsonl" "$T/cal.json" <<'PY' || fail "features line"
import json, math, sys
j = json.loads(open(sys.argv[1]).readline())
c = json.load(open(sys.argv[2]))
s = j["scores"]
p = s["p_correct.max_prob"]
assert 0 < p < 1, p
assert "hs_coe_c" in s and "kv_coe_r" in s
# Platt: p = 1 / (1 + exp(-(a * raw + b))) (as the file says), recomputed here.
a, b = c["a"], c["b"]
want = 1 / (1 + math.exp(-(a * s["max_prob"] + b)))
assert abs(p - want) < 1e-6, (p, want)
PY
# auto: <model>.calibration.<score>.json next to the model.
cp "$MODEL" "$T/m.gguf"
cp "$T/cal.json" "$T/m.calibration.max_prob.json"
"$KVLENS" generate -m "$T/m.gguf" -p "Hello" -n 6 -t 2 --calibration auto --score max_prob > /dev/null 2> "$T/err" \
    || { cat "$T/err"; fail "--calibration auto"; }
grep -q "p_correct.max_prob" "$T/err" || fail "auto calibration not applied"
"$KVLENS" generate -m "$T/m.gguf" -p "Hello" -n 6 --calibration auto --score kv_coe_r 2> "$T/err"
[ $? != 0 ] && [ "$(wc -l < "$T/err")" = 1 ] && grep -q "m.calibration.kv_coe_r.json" "$T/err" \
    || { cat "$T/err"; fail "missing auto calibration: expected one line naming the file"; }
echo PASS
