#!/usr/bin/env bash
# Fuzz smoke run: replays the committed seed corpus and the regression inputs of one target (each must pass),
# then fuzzes for SECONDS starting from the seeds; new inputs go to a scratch corpus, so the committed one is
# never changed. A crash fails the test with libFuzzer's report and the input.
# Usage: fuzz_smoke.sh FUZZER SEED_DIR REGRESSION_DIR SECONDS
set -u
FUZZER=$1
SEEDS=$2
REGRESSIONS=$3
SECONDS_=$4
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
files=("$SEEDS"/*)
[ -d "$REGRESSIONS" ] && files+=("$REGRESSIONS"/*)
"$FUZZER" -runs=0 "${files[@]}" > "$T/replay.log" 2>&1 || { tail -40 "$T/replay.log"; echo "FAIL: replay"; exit 1; }
# Crashing inputs are kept (KVLENS_FUZZ_ARTIFACTS, default ./fuzz-artifacts in the build dir) to become
# regression inputs in fuzz/regressions/<target>/.
ART=${KVLENS_FUZZ_ARTIFACTS:-$PWD/fuzz-artifacts}/$(basename "$FUZZER")
mkdir -p "$T/corpus" "$ART"
TMPDIR="$T" "$FUZZER" "$T/corpus" "$SEEDS" -max_total_time="$SECONDS_" -max_len=4096 -timeout=20 \
    -rss_limit_mb=4096 -artifact_prefix="$ART/" -print_final_stats=1 > "$T/fuzz.log" 2>&1
rc=$?
grep -E "^stat::number_of_executed_units|^stat::new_units_added|^stat::peak_rss_mb" "$T/fuzz.log"
if [ $rc -ne 0 ]; then
    tail -60 "$T/fuzz.log"
    for f in "$ART"/*; do [ -f "$f" ] && { echo "input ($f):"; head -c 2000 "$f" | od -c | head -40; }; done
    echo "FAIL: fuzzing found a crash"
    exit 1
fi
echo "ok"
