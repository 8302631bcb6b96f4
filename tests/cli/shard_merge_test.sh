#!/usr/bin/env bash
# --shard I/N and kvlens eval merge, end to end on a tiny model: the shards of an eval coe run (2 and 3 of
# them) and of an eval sample run, merged, equal the one-machine run sample for sample (texts, labels, scores
# within float tolerance; timing fields excluded) and report for report (apart from the command and the
# decoding time); every shard holds exactly the samples an independent (Python) FNV-1a + fmix64 assigns it;
# a shard directory refuses a rerun as another shard; and every merge refusal names its problem and writes
# nothing.
# Usage: shard_merge_test.sh KVLENS MODEL
set -u
KVLENS=$1
MODEL=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() {
    echo "FAIL: $*"
    exit 1
}
HERE=$(cd "$(dirname "$0")" && pwd)
COMPARE="python3 $HERE/shard_compare.py"

coe() {  # out [extra...]
    local out=$1
    shift
    "$KVLENS" eval coe -m "$MODEL" --dataset arith --limit "${LIMIT:-20}" -n 16 --parallel "${PAR:-1}" -t 1 \
        --bootstrap 50 -o "$T/$out" "$@" 2> "$T/err" || { cat "$T/err"; fail "eval coe $out $*"; }
}
smp() {  # out [extra...]
    local out=$1
    shift
    "$KVLENS" eval sample -m "$MODEL" --dataset arith --limit 8 --n 1,2 --max-tokens 8 -t 1 \
        -o "$T/$out" "$@" 2> "$T/err" || { cat "$T/err"; fail "eval sample $out $*"; }
}
merge() {  # out dirs...
    local out=$1
    shift
    "$KVLENS" eval merge -o "$T/$out" "$@" 2> "$T/err"
}

# eval coe: one machine, 2 shards, 3 shards.
coe one
coe s0of2 --shard 0/2
coe s1of2 --shard 1/2
for i in 0 1 2; do coe s${i}of3 --shard $i/3; done
merge m2 "$T/s0of2" "$T/s1of2" || { cat "$T/err"; fail "merge of 2 coe shards"; }
merge m3 "$T/s2of3" "$T/s0of3" "$T/s1of3" || { cat "$T/err"; fail "merge of 3 coe shards (any order)"; }
$COMPARE one-vs-merged "$T/one" "$T/m2" || fail "coe: 2 shards merged differ from one machine"
$COMPARE one-vs-merged "$T/one" "$T/m3" || fail "coe: 3 shards merged differ from one machine"
$COMPARE shards 2 "$T/s0of2" "$T/s1of2" || fail "coe: shard membership (2)"
$COMPARE shards 3 "$T/s0of3" "$T/s1of3" "$T/s2of3" || fail "coe: shard membership (3)"
# Batches of 2: an answer's neighbours differ between a shard and one machine, so scores move at ~1e-5.
PAR=2 coe one-p2
PAR=2 coe p2s0 --shard 0/2
PAR=2 coe p2s1 --shard 1/2
merge mp2 "$T/p2s0" "$T/p2s1" || { cat "$T/err"; fail "merge of 2 coe shards (--parallel 2)"; }
$COMPARE one-vs-merged "$T/one-p2" "$T/mp2" --loose || fail "coe --parallel 2: merged differ from one machine"

# With a mix of correct and wrong answers (the same labels in every directory), the one-machine rerun rewrites
# its report from its records, and the merges write theirs: AUROCs, the configuration chosen on the
# development part, the combined model and the verdicts must agree.
$COMPARE relabel "$T/one" "$T/s0of2" "$T/s1of2" "$T/s0of3" "$T/s1of3" "$T/s2of3"
coe one
merge m2r "$T/s0of2" "$T/s1of2" || { cat "$T/err"; fail "merge of 2 relabelled coe shards"; }
merge m3r "$T/s0of3" "$T/s1of3" "$T/s2of3" || { cat "$T/err"; fail "merge of 3 relabelled coe shards"; }
$COMPARE one-vs-merged "$T/one" "$T/m2r" || fail "coe (mixed labels): 2 shards merged differ"
$COMPARE one-vs-merged "$T/one" "$T/m3r" || fail "coe (mixed labels): 3 shards merged differ"
for what in "chosen on dev" "Combined model" "Does KV-CoE reach"; do
    grep -q "$what" "$T/m3r/report.md" || fail "the mixed-label report lacks '$what': the comparison is void"
done

# eval sample: one machine, 2 shards.
smp one-sample
smp ss0 --shard 0/2
smp ss1 --shard 1/2
merge ms "$T/ss1" "$T/ss0" || { cat "$T/err"; fail "merge of 2 sample shards"; }
$COMPARE one-vs-merged "$T/one-sample" "$T/ms" || fail "sample: 2 shards merged differ from one machine"
$COMPARE shards 2 "$T/ss0" "$T/ss1" || fail "sample: shard membership"
$COMPARE relabel "$T/one-sample" "$T/ss0" "$T/ss1"
smp one-sample
merge msr "$T/ss0" "$T/ss1" || { cat "$T/err"; fail "merge of 2 relabelled sample shards"; }
$COMPARE one-vs-merged "$T/one-sample" "$T/msr" || fail "sample (mixed labels): 2 shards merged differ"

# A shard's directory is that shard's: a rerun as another shard or unsharded is refused.
"$KVLENS" eval coe -m "$MODEL" --dataset arith --limit 20 -n 16 --parallel 1 -t 1 --bootstrap 50 \
    -o "$T/s0of2" --shard 1/2 2> "$T/err" && fail "a shard 0/2 directory accepted a rerun as 1/2"
grep -q "other settings" "$T/err" || { cat "$T/err"; fail "the shard rerun refusal does not say why"; }

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
coe other --shard 1/2 --coe-kv-part v
refused "different settings" "other settings (token_coe" "$T/s0of2" "$T/other"
coe other-report --shard 1/2 --seed 7
refused "different report settings" "other report settings (seed" "$T/s0of2" "$T/other-report"
refused "shards of another count" "another shard count" "$T/s0of2" "$T/s1of3" "$T/s2of3"
LIMIT=10 coe limit --shard 1/2
refused "a shard of another --limit" "covers other samples" "$T/s0of2" "$T/limit"
refused "a missing shard" "shard(s) 1 of 2 missing" "$T/s0of2"
refused "a missing shard (3)" "shard(s) 0, 2 of 3 missing" "$T/s1of3"
refused "a shard given twice" "shard 0/2 given twice" "$T/s0of2" "$T/s0of2" "$T/s1of2"
refused "an unsharded run" "not the output of a run with --shard" "$T/one" "$T/s1of2"
refused "shards of eval coe and eval sample" "an eval sample run" "$T/s0of2" "$T/ss1"
# Overlap: shard 0's directory also holds one of shard 1's samples.
cp -r "$T/s0of2" "$T/overlap"
head -n 1 "$T/s1of2/samples.jsonl" >> "$T/overlap/samples.jsonl"
refused "overlapping samples" "is in both" "$T/overlap" "$T/s1of2"
# A sample in a shard it does not hash to (the other shard lacks it).
cp -r "$T/s1of2" "$T/short1"
tail -n +2 "$T/s1of2/samples.jsonl" > "$T/short1/samples.jsonl"
refused "a sample in the wrong shard" "of shard 1" "$T/overlap" "$T/short1"
# Missing sample: shard 1 did not finish.
refused "a missing sample" "1 of 20 samples are in no shard" "$T/s0of2" "$T/short1"
# A torn last line (a shard killed mid-write).
cp -r "$T/s1of2" "$T/torn"
printf '{"index": 3, "outp' >> "$T/torn/samples.jsonl"
refused "a torn shard" "torn line" "$T/s0of2" "$T/torn"
# A non-empty output directory.
mkdir -p "$T/full" && touch "$T/full/x"
merge full "$T/s0of2" "$T/s1of2" && fail "merge into a non-empty directory"
grep -q "not empty" "$T/err" || { cat "$T/err"; fail "non-empty -o: no reason given"; }
[ "$(ls "$T/full")" = x ] || fail "the refused merge wrote into $T/full"
echo "ok: sharded runs merge into the one-machine run; refusals hold"
