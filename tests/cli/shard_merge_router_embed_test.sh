#!/usr/bin/env bash
# --shard I/N on router label, router eval and eval embed, and kvlens eval merge of their shards, end to end on
# the project's reasoning model (tools/reasoner: a real mix of labels 0/75/100 and of right and wrong routes,
# and the 4 layers the embedding preset reads). The merged shards equal the one-machine run: labels.jsonl and
# eval.jsonl record for record (timing fields excluded), report.md (apart from the command and the wall-clock
# column) and the SVG; for eval embed, whose shards write rows and no report (the probe is a k-fold CV over
# all texts), texts.jsonl, kv.npy and hidden.npy byte for byte and results.json and report.md apart from the
# command and wall times. Every sample is in the shard an independent (Python) hash gives; an eval embed shard
# resumes; and the refusals of these kinds name their problem and write nothing.
# Usage: shard_merge_router_embed_test.sh KVLENS REASONER_GGUF ROUTER_JSON DATA_DIR
set -u
KVLENS=$1
MODEL=$2
ROUTER=$3
DATA=$4
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() {
    echo "FAIL: $*"
    exit 1
}
HERE=$(cd "$(dirname "$0")" && pwd)
COMPARE="python3 $HERE/shard_compare.py"

# 12 questions of the reasoning model's test set, levels 1-5; 30 of its questions and 10 expressions as texts.
python3 - "$DATA" "$T" <<'PY' || fail "fixtures"
import json, sys
data, t = sys.argv[1:]
rows = open(f"{data}/arith-reasoner/test.jsonl").read().splitlines()
open(f"{t}/q.jsonl", "w").write("".join(rows[i] + "\n" for i in (0, 1, 2, 100, 101, 102, 200, 201, 300, 301, 400, 401)))
cfg = json.load(open(f"{data}/configs/arith-reasoner.json"))
cfg["file"] = "q.jsonl"
json.dump(cfg, open(f"{t}/q.json", "w"))
open(f"{t}/texts.jsonl", "w").write("".join(rows[100 * lv + i] + "\n" for lv in range(5) for i in range(6)))
json.dump({"name": "level", "folds": 3, "seed": 0,
           "sources": [{"file": "texts.jsonl", "text_field": "question", "label_field": "difficulty"}]},
          open(f"{t}/level.json", "w"))
json.dump({"name": "form", "folds": 2, "seed": 1,
           "sources": [{"file": "texts.jsonl", "text_fields": ["question", "expression"], "limit": 5}]},
          open(f"{t}/form.json", "w"))
PY

label() {  # out [extra...]
    local out=$1
    shift
    "$KVLENS" router label -m "$MODEL" --dataset "$T/q.json" -n 96 --windows 16 -t 1 -o "$T/$out" "$@" \
        2> "$T/err" || { cat "$T/err"; fail "router label $out $*"; }
}
reval() {  # out [extra...]
    local out=$1
    shift
    "$KVLENS" router eval -m "$MODEL" --router "$ROUTER" --dataset "$T/q.json" -n 96 --check-every 8 -t 1 \
        -o "$T/$out" "$@" 2> "$T/err" || { cat "$T/err"; fail "router eval $out $*"; }
}
# One sequence per decode: a text's embedding does not depend on which texts share its batch (with more, its
# neighbours differ between a shard and one machine, and the floats move at ~1e-5).
embed() {  # out [extra...]
    local out=$1
    shift
    "$KVLENS" eval embed -m "$MODEL" --tasks "$T/level.json" "$T/form.json" --batch-seqs 1 -t 1 -o "$T/$out" \
        "$@" 2> "$T/err" || { cat "$T/err"; fail "eval embed $out $*"; }
}
merge() {  # out dirs...
    local out=$1
    shift
    "$KVLENS" eval merge -o "$T/$out" "$@" > /dev/null 2> "$T/err"
}

# router label: one machine, 3 shards (with windows along the answers).
label label-one
for i in 0 1 2; do label l$i --shard $i/3; done
merge label-merged "$T/l2" "$T/l0" "$T/l1" || { cat "$T/err"; fail "merge of 3 router label shards"; }
$COMPARE one-vs-merged "$T/label-one" "$T/label-merged" || fail "router label: merged differ from one machine"
$COMPARE shards 3 "$T/l0" "$T/l1" "$T/l2" || fail "router label: shard membership"
for what in "fast correct, short *| *[1-9]" "fast wrong, slow correct *| *[1-9]" "both wrong *| *[1-9]" \
    "Windows every 16"; do
    grep -q "$what" "$T/label-merged/report.md" || fail "the label report lacks '$what': the comparison is void"
done

# router eval: one machine, 2 shards.
reval eval-one
reval e0 --shard 0/2
reval e1 --shard 1/2
merge eval-merged "$T/e0" "$T/e1" || { cat "$T/err"; fail "merge of 2 router eval shards"; }
$COMPARE one-vs-merged "$T/eval-one" "$T/eval-merged" || fail "router eval: merged differ from one machine"
$COMPARE shards 2 "$T/e0" "$T/e1" || fail "router eval: shard membership"
python3 - "$T/eval-merged/eval.jsonl" <<'PY' || fail "router eval: the comparison is void (no mix of routes)"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert {r["routed"]["initial"] for r in rows} == {"fast", "slow"}
assert {r["always_fast"]["correct"] for r in rows} == {True, False}
PY

# eval embed: one machine, 2 shards; shard 1 again from a copy cut to 3 rows and a torn line (it resumes).
embed embed-one
embed x0 --shard 0/2
embed x1 --shard 1/2
[ -e "$T/x0/report.md" ] && fail "an eval embed shard wrote a report of its part"
merge embed-merged "$T/x1" "$T/x0" || { cat "$T/err"; fail "merge of 2 eval embed shards"; }
$COMPARE one-vs-merged "$T/embed-one" "$T/embed-merged" || fail "eval embed: merged differ from one machine"
$COMPARE shards 2 "$T/x0" "$T/x1" || fail "eval embed: shard membership"
cp -r "$T/x1" "$T/x1-resumed"
head -n 3 "$T/x1/samples.jsonl" > "$T/x1-resumed/samples.jsonl"
printf '{"index": 7, "te' >> "$T/x1-resumed/samples.jsonl"
embed x1-resumed --shard 1/2
merge embed-resumed "$T/x0" "$T/x1-resumed" || { cat "$T/err"; fail "merge with a resumed embed shard"; }
$COMPARE one-vs-merged "$T/embed-one" "$T/embed-resumed" || fail "eval embed: a resumed shard differs"

# A shard's directory is that shard's; a shard embeds, so it needs a model.
"$KVLENS" eval embed -m "$MODEL" --tasks "$T/level.json" "$T/form.json" --batch-seqs 1 -t 1 -o "$T/x0" \
    --shard 1/2 2> "$T/err" && fail "an eval embed shard 0/2 directory accepted a rerun as 1/2"
grep -q "other settings" "$T/err" || { cat "$T/err"; fail "the shard rerun refusal does not say why"; }
"$KVLENS" eval embed --tasks "$T/level.json" --shard 0/2 -o "$T/nomodel" 2> "$T/err" \
    && fail "eval embed --shard without a model"
grep -q "give -m" "$T/err" || { cat "$T/err"; fail "--shard without -m: no reason given"; }

# Refusals: each names its problem and writes nothing.
refused() {  # what pattern dirs...
    local what=$1 pattern=$2
    shift 2
    rm -rf "$T/bad"
    merge bad "$@" && fail "merge accepted $what"
    grep -q -- "$pattern" "$T/err" || { cat "$T/err"; fail "$what: the error lacks '$pattern'"; }
    [ -e "$T/bad" ] && fail "$what: the refused merge wrote $T/bad"
    echo "ok: refused $what: $(head -c 300 "$T/err")"
}
label l2-long --shard 2/3 --long-tokens 64
refused "router label shards of other settings" "other settings (long_tokens" "$T/l0" "$T/l1" "$T/l2-long"
reval e1-long --shard 1/2 --long-tokens 64
refused "router eval shards of other report settings" "other report settings (long_tokens" "$T/e0" "$T/e1-long"
refused "router label and router eval shards" "is a router eval run" "$T/l0" "$T/e1"
refused "a missing router label shard" "shard(s) 2 of 3 missing" "$T/l0" "$T/l1"
refused "a router eval shard given twice" "shard 1/2 given twice" "$T/e1" "$T/e0" "$T/e1"
refused "an unsharded router eval run" "not the output of a run with --shard" "$T/eval-one" "$T/e1"
cp -r "$T/l1" "$T/l1-short"
tail -n +2 "$T/l1/labels.jsonl" > "$T/l1-short/labels.jsonl"
refused "a missing router label sample" "1 of 12 samples are in no shard" "$T/l0" "$T/l1-short" "$T/l2"
"$KVLENS" eval embed -m "$MODEL" --tasks "$T/level.json" --batch-seqs 1 -t 1 -o "$T/x1-tasks" --shard 1/2 \
    2> "$T/err" || { cat "$T/err"; fail "eval embed of one task"; }
refused "eval embed shards of other tasks" "other settings (n_texts" "$T/x0" "$T/x1-tasks"
embed x1-probe --shard 1/2 --C 0.5
refused "eval embed shards of another probe" "other report settings (probe" "$T/x0" "$T/x1-probe"
cp -r "$T/x0" "$T/x0-short"
tail -n +2 "$T/x0/samples.jsonl" > "$T/x0-short/samples.jsonl"
refused "a missing eval embed text" "samples are in no shard" "$T/x0-short" "$T/x1"
# Found only while writing: an --extra of the wrong row count. What was written is removed.
python3 - "$T/bad.npy" <<'PY'
import struct, sys
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }"
header += " " * (63 - len(header) % 64) + "\n"
open(sys.argv[1], "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
                              + struct.pack("<6f", *range(6)))
PY
embed x0-extra --shard 0/2 --extra "bad=$T/bad.npy"
embed x1-extra --shard 1/2 --extra "bad=$T/bad.npy"
refused "an --extra of 3 rows" "has 3 rows" "$T/x0-extra" "$T/x1-extra"
mkdir "$T/empty"
merge empty "$T/x0-extra" "$T/x1-extra" && fail "merge accepted an --extra of 3 rows into an empty directory"
[ -z "$(ls -A "$T/empty")" ] || fail "the refused merge left files in the empty directory it was given"
echo "ok: router label, router eval and eval embed shards merge into the one-machine run; refusals hold"
