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

# Logistic over several scores, fitted on an eval coe run of MODEL (its run.json names the model). A random
# model answers nothing right: the labels are replaced, the scores and run.json are the run's own.
MODELS=$(dirname "$MODEL")
"$KVLENS" eval coe -m "$MODEL" --dataset arith --limit 16 -n 6 --parallel 4 -t 2 --bootstrap 10 -o "$T/run" \
    > /dev/null 2> "$T/err" || { cat "$T/err"; fail "eval coe"; }
python3 - "$T/run/samples.jsonl" <<'PY' || fail "relabel"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
for r in recs:
    r["correct"] = r["index"] % 3 != 0
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in recs))
PY
FEATURES=kv_coe_r,kv_coe_c,max_prob,inv_ppl,inv_entropy,neg_length
"$KVLENS" calibrate --from "$T/run/samples.jsonl" --method logistic --features $FEATURES --part all \
    -o "$T/combined.json" > "$T/out" 2> "$T/err" || { cat "$T/err"; fail "calibrate --method logistic"; }
grep -q "training AUROC" "$T/out" && grep -q "^  kv_coe_r " "$T/out" && grep -q "^  bias " "$T/out" \
    || { cat "$T/out"; fail "calibrate prints the AUROC and the weights"; }
python3 - "$T/combined.json" "$MODEL" <<'PY' || fail "logistic file"
import json, os, sys
c = json.load(open(sys.argv[1]))
assert c["version"] == 2 and c["method"] == "logistic" and c["score"] == "combined", c
assert c["features"][0] == "kv_coe_r" and len(c["weights"]) == len(c["features"]) == 6, c
m = c["model"]
assert m["file"] == os.path.basename(sys.argv[2]) and m["size"] == os.path.getsize(sys.argv[2]), m
assert m["arch"] and m["n_layer"] > 0, m
PY
"$KVLENS" generate -m "$MODEL" -p "Hello" -n 6 -t 2 --calibration "$T/combined.json" --features "$T/f2.jsonl" \
    > /dev/null 2> "$T/err" || { cat "$T/err"; fail "generate --calibration (logistic)"; }
grep -q "kvlens: p_correct.combined = [01]\.[0-9]* (from 6 scores)" "$T/err" \
    || { cat "$T/err"; fail "no combined P(correct) line"; }
python3 - "$T/f2.jsonl" "$T/combined.json" <<'PY' || fail "combined probability"
import json, math, sys
s = json.loads(open(sys.argv[1]).readline())["scores"]
c = json.load(open(sys.argv[2]))
# p = sigmoid(w . (x - mean) / std + bias) over the features, as the file says (std 0: dropped).
e = c["bias"] + sum(w * (s[f] - m) / sd
                    for f, w, m, sd in zip(c["features"], c["weights"], c["mean"], c["std"]) if sd > 0)
want = 1 / (1 + math.exp(-e))
assert abs(s["p_correct.combined"] - want) < 1e-9, (s["p_correct.combined"], want)
PY
# sample: the weighted vote and abstention on the combined probability.
"$KVLENS" sample -m "$MODEL" -p "Hello" -n 3 --max-tokens 4 -t 2 --strategy weighted \
    --calibration "$T/combined.json" -o "$T/s.jsonl" > "$T/out" 2> "$T/err" || { cat "$T/err"; fail "sample weighted"; }
grep -q "strategy weighted, score combined" "$T/out" || { cat "$T/out"; fail "weighted vote on combined"; }
[ "$(grep -c '"p_correct.combined"' "$T/s.jsonl")" = 3 ] || fail "sample lines lack p_correct.combined"
"$KVLENS" sample -m "$MODEL" -p "Hello" -n 2 --max-tokens 4 -t 2 --strategy best --abstain-below 1.01 \
    --calibration "$T/combined.json" > "$T/out" 2> "$T/err" || { cat "$T/err"; fail "sample abstain"; }
grep -q "^abstained: confidence [0-9.]* < 1.01 (strategy best, score combined)" "$T/out" \
    || { cat "$T/out"; fail "abstention on combined"; }
# A renamed copy is the same model; another model, or the same one quantized (only the size differs), is
# refused with one line naming both.
"$KVLENS" generate -m "$T/m.gguf" -p "Hello" -n 2 -t 2 --calibration "$T/combined.json" > /dev/null 2> "$T/err" \
    || { cat "$T/err"; fail "a renamed copy of the model was refused"; }
for other in tiny-qwen2.gguf tiny-llama-q8_0.gguf; do
    [ -f "$MODELS/$other" ] && [ "$MODELS/$other" != "$MODEL" ] || continue
    "$KVLENS" generate -m "$MODELS/$other" -p "Hello" -n 2 --calibration "$T/combined.json" > /dev/null 2> "$T/err"
    [ $? != 0 ] && [ "$(wc -l < "$T/err")" = 1 ] && grep -q "fitted for model '$(basename "$MODEL")'" "$T/err" \
        && grep -q "not for the loaded '$other'" "$T/err" \
        || { cat "$T/err"; fail "$other: expected one line refusing the calibration of another model"; }
done
# A feature the answers do not have: one line naming it.
python3 - "$T/combined.json" "$T/renamed.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["features"][0] = "kv_coe_old_name"
json.dump(c, open(sys.argv[2], "w"))
PY
"$KVLENS" generate -m "$MODEL" -p "Hello" -n 2 --calibration "$T/renamed.json" > /dev/null 2> "$T/err"
[ $? != 0 ] && [ "$(wc -l < "$T/err")" = 1 ] && grep -q "no score 'kv_coe_old_name'" "$T/err" \
    || { cat "$T/err"; fail "missing feature: expected one line naming it"; }
echo PASS
