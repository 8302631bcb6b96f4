#!/usr/bin/env bash
# kvlens embed on bad input: an empty line, a line longer than the context, invalid UTF-8 and a bad JSONL line.
# Each gets a message naming its line; the other lines are embedded (default), or the run stops at the first
# bad line with the lines before it written (--on-error stop). Usage: embed_bad_input_test.sh KVLENS MODEL
set -u
KVLENS=$1
MODEL=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
# Tiny models have 2 layers: the preset's algebra over both.
FLAGS=(-m "$MODEL" --layers -2..-1 --ctx 64 --batch-seqs 3)

long=$(for i in $(seq 1 200); do printf 'word%d ' "$i"; done)
{
    echo "first line"
    echo ""
    echo "$long"
    printf 'bad \xff bytes\n'
    echo "fifth line"
    echo "sixth line"
} > "$T/in.txt"

"$KVLENS" embed "${FLAGS[@]}" -i "$T/in.txt" -o "$T/out.jsonl" --npy "$T/out.npy" 2> "$T/err" \
    || { cat "$T/err"; fail "skip mode exited non-zero"; }
cat "$T/err"
grep -q "line 2: empty text (skipped)" "$T/err" || fail "no message for the empty line 2"
grep -q "line 3: .* tokens do not fit the context of" "$T/err" || fail "no message for the overlong line 3"
grep -q "line 4: invalid UTF-8 at byte 4" "$T/err" || fail "no message for the invalid UTF-8 line 4"
[ "$(grep -c '"embedding"' "$T/out.jsonl")" = 3 ] || fail "expected 3 embedded lines"
for n in 1 5 6; do grep -q "^{\"embedding\":.*\"line\":$n," "$T/out.jsonl" || fail "line $n not embedded"; done
for n in 2 3 4; do grep -q "\"error\":.*\"line\":$n}" "$T/out.jsonl" || fail "line $n has no error record"; done
python3 - "$T" <<'PY' || fail "npy check"
import sys, numpy as np
t = sys.argv[1]
x = np.load(t + "/out.npy"); lines = np.load(t + "/out.lines.npy")
assert x.dtype == np.float32 and x.shape == (3, 32), (x.dtype, x.shape)
assert lines.tolist() == [1, 5, 6], lines
assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
PY

# --on-error stop: line 1 written, then a clear stop at line 2, exit status != 0.
if "$KVLENS" embed "${FLAGS[@]}" -i "$T/in.txt" -o "$T/stop.jsonl" --on-error stop 2> "$T/err2"; then
    fail "stop mode exited 0"
fi
cat "$T/err2"
grep -q "line 2: empty text (stopping: --on-error stop)" "$T/err2" || fail "no stop message"
grep -q "stopped at line 2 " "$T/err2" || fail "the error does not name line 2"
[ "$(grep -c '"embedding"' "$T/stop.jsonl")" = 1 ] || fail "stop mode lost line 1"

# JSONL with --field: a line that is not JSON and one without the field.
printf '{"text": "hello"}\nnot json\n{"other": 1}\n{"text": "world"}\n' > "$T/in.jsonl"
"$KVLENS" embed "${FLAGS[@]}" -i "$T/in.jsonl" --field text -o "$T/j.jsonl" 2> "$T/err3" || fail "jsonl run"
grep -q "line 2: not valid JSON" "$T/err3" || fail "no message for bad JSON"
grep -q "line 3: no string field 'text'" "$T/err3" || fail "no message for the missing field"
[ "$(grep -c '"embedding"' "$T/j.jsonl")" = 2 ] || fail "expected 2 embedded JSONL lines"
echo PASS
