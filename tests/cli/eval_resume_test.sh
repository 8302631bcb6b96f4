#!/usr/bin/env bash
# Kill an evaluation half-way (SIGKILL, plus a torn last line as if killed mid-write), rerun the same command:
# it resumes, keeps what was written, and the final JSONL holds every sample exactly once.
set -euo pipefail
bin=$1 model=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$tmp/run
n=24
cmd=("$bin" eval coe -m "$model" --dataset arith --limit $n -n 24 --parallel 2 -t 1 --bootstrap 50 -o "$out")

"${cmd[@]}" 2>"$tmp/log1" &
pid=$!
for _ in $(seq 1 600); do
    lines=0
    [ -f "$out/samples.jsonl" ] && lines=$(wc -l <"$out/samples.jsonl")
    [ "$lines" -ge 6 ] && break
    sleep 0.05
done
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
first=$(wc -l <"$out/samples.jsonl")
echo "killed after $first of $n samples"
[ "$first" -ge 1 ] && [ "$first" -lt $n ] || { echo "FAIL: kill did not land half-way ($first of $n)"; exit 1; }
cp "$out/samples.jsonl" "$tmp/before.jsonl"
printf '{"index": 9999, "output": "torn mid-wri' >>"$out/samples.jsonl"  # a write cut by the kill

"${cmd[@]}" 2>"$tmp/log2" || { echo "FAIL: the rerun failed:"; tail -3 "$tmp/log2"; exit 1; }
python3 - "$out/samples.jsonl" "$tmp/before.jsonl" $n <<'PY'
import collections, json, sys
path, before, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(path).read()
assert text.endswith("\n"), "file does not end with a newline"
idx = [json.loads(l)["index"] for l in text.splitlines()]
dup = [i for i, c in collections.Counter(idx).items() if c > 1]
assert not dup, f"samples written twice: {dup}"
assert sorted(idx) == list(range(n)), f"indices {sorted(idx)} != 0..{n-1}"
assert text.startswith(open(before).read()), "the first run's lines were not kept as they were"
print(f"ok: {len(idx)} samples, each once; the first {len(open(before).read().splitlines())} kept")
PY
test -s "$out/report.md" && test -s "$out/roc.svg"

# The K/V source is part of a run: this run used the default (cache) and says so; resuming it from the graph
# is refused; a graph run records nothing, as every run did while graph was the default (issue #14), so those
# old runs keep resuming with --kv-source graph.
grep -q '"kv_source": *"cache"' "$out/run.json" || { echo "FAIL: run.json lacks kv_source cache"; exit 1; }
"${cmd[@]}" --kv-source graph 2>"$tmp/log3" && { echo "FAIL: a graph rerun of a cache run was accepted"; exit 1; }
grep -q "run.json" "$tmp/log3" || { cat "$tmp/log3"; echo "FAIL: the refusal does not name run.json"; exit 1; }
graph_cmd=("${cmd[@]}")
for i in "${!graph_cmd[@]}"; do [ "${graph_cmd[$i]}" = "$out" ] && graph_cmd[$i]="$tmp/graph-run"; done
"${graph_cmd[@]}" --kv-source graph 2>"$tmp/log4" || { tail -3 "$tmp/log4"; echo "FAIL: graph run"; exit 1; }
grep -q '"kv_source"' "$tmp/graph-run/run.json" && { echo "FAIL: a graph run records kv_source"; exit 1; }
echo "ok: --kv-source is part of the run identity"

# --rescore: labels are the matcher's reading of the stored outputs. Fake an older matcher's reading on one
# answer; a plain rerun keeps it and warns; --rescore relabels it without decoding and keeps the fake under
# relabelled_from; the report counts it.
python3 - "$out/samples.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = rows[0]
r["extracted"], r["matched"], r["correct"] = "fake", not r["matched"], not r["correct"]
open(sys.argv[1], "w").write("".join(json.dumps(x) + "\n" for x in rows))
PY
cp "$out/samples.jsonl" "$tmp/stale.jsonl"
"${cmd[@]}" 2>"$tmp/log5" || { tail -3 "$tmp/log5"; echo "FAIL: rerun on a stale label"; exit 1; }
grep -q "1 of $n stored answers.*--rescore" "$tmp/log5" || { cat "$tmp/log5"; echo "FAIL: no stale-label warning"; exit 1; }
cmp -s "$out/samples.jsonl" "$tmp/stale.jsonl" || { echo "FAIL: a plain rerun changed samples.jsonl"; exit 1; }
"${cmd[@]}" --rescore 2>"$tmp/log6" || { tail -3 "$tmp/log6"; echo "FAIL: --rescore"; exit 1; }
grep -q "1 of $n stored answers relabelled" "$tmp/log6" || { cat "$tmp/log6"; echo "FAIL: --rescore said"; exit 1; }
python3 - "$out/samples.jsonl" "$tmp/before.jsonl" "$tmp/stale.jsonl" <<'PY'
import json, sys
now = [json.loads(l) for l in open(sys.argv[1])]
stale = [json.loads(l) for l in open(sys.argv[3])]
assert [r["index"] for r in now] == [r["index"] for r in stale], "records reordered or lost"
first = json.loads(open(sys.argv[2]).readline())
r = now[0]
for k in ("extracted", "matched", "correct", "output_tokens"):
    assert r[k] == first[k], f"{k}: {r[k]!r} != {first[k]!r} (not relabelled from the stored output)"
assert r["relabelled_from"]["extracted"] == "fake", r.get("relabelled_from")
assert all("relabelled_from" not in x for x in now[1:]), "other records relabelled"
print("ok: --rescore relabelled the stale answer from its stored output")
PY
grep -q "relabelled: 1 of $n answers" "$out/report.md" || { echo "FAIL: report.md does not count the relabelled answer"; exit 1; }
