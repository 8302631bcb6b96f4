"""Checks for shard_merge_test.sh.

one-vs-merged ONE MERGED [--loose]: the per-sample results (samples.jsonl; router label: labels.jsonl, router
eval: eval.jsonl) equal record for record (numbers within 1e-9 relative, timing fields excluded), run.json
identities equal, report.md equal apart from the command and wall times, the other files (router eval's SVG)
byte for byte. eval embed, whose merged directory holds no per-sample file: texts.jsonl, kv.npy and hidden.npy
byte for byte, results.json apart from the command and wall times, and the report as above. --loose: numbers within 1e-3 (texts still exact), no report comparison: for eval coe with --parallel > 1,
where an answer's batch neighbours differ between a shard and the one-machine run, and llama.cpp's batched
kernels move the scores at about 1e-5 (as any change of --parallel does).
relabel DIR...: rewrites each samples.jsonl with a fixed mix of correct and wrong answers (the tiny random
model never finishes an answer, so every real label is "wrong" and the report's metrics would be n/a).
shards N DIR...: every record of shard I hashes to I (FNV-1a 64 of the id, or of eval embed's text, then
MurmurHash3's fmix64, % N), computed here independently of the C++.
"""
import json
import math
import sys

TOL = 1e-9
TIMING = {"batch_seconds", "batch_size", "seconds", "decode_seconds", "mean_batch_size", "wall_ms"}  # wall times, and the batch a coe answer shared
# eval embed's results.json: the command and the wall times
EMBED_TIMING = {"command", "main_pass_seconds", "seconds_per_1000_texts"}
TIMING_COLUMNS = {"wall-clock s", "wall-clock / always-slow", "s / 1000 texts"}  # report table columns of wall times
RESULTS = {"router_label": "labels.jsonl", "router_eval": "eval.jsonl"}
M64 = (1 << 64) - 1


def kind(d):
    return json.load(open(f"{d}/run.json")).get("eval", "")


def records(d):
    name = RESULTS.get(kind(d), "samples.jsonl")
    return [json.loads(line) for line in open(f"{d}/{name}") if line.strip()]


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def same(a, b, path):
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) - TIMING != set(b) - TIMING:
            return f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            if k in TIMING:
                continue
            why = same(a[k], b[k], f"{path}.{k}")
            if why:
                return why
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            why = same(x, y, f"{path}[{i}]")
            if why:
                return why
        return None
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if math.isclose(a, b, rel_tol=TOL, abs_tol=TOL) or (math.isnan(a) and math.isnan(b)):
                return None
    if a != b:
        return f"{path}: {a!r} vs {b!r}"
    return None


def report_lines(d):
    lines = open(f"{d}/report.md").read().splitlines()
    out = []
    masked = set()  # columns of the current table that hold wall times
    for i, line in enumerate(lines):
        if line.startswith("kvlens eval") or line.startswith("Command: `"):
            continue  # the command (inside the Command block, or inline)
        if "decoding time" in line or "tokens/s" in line:
            continue  # the wall time
        if line.startswith("|"):
            row = cells(line)
            if i == 0 or not lines[i - 1].startswith("|"):  # a table's header
                masked = {j for j, c in enumerate(row) if c in TIMING_COLUMNS}
            line = " | ".join("*" if j in masked else c for j, c in enumerate(row))
        out.append(line)
    return out


def same_reports(one, merged):
    la, lb = report_lines(one), report_lines(merged)
    for x, y in zip(la, lb):
        assert x == y, f"report.md differs:\n  one:    {x}\n  merged: {y}"
    assert len(la) == len(lb), f"report.md lengths {len(la)} vs {len(lb)}"
    assert len(la) > 10, "report.md nearly empty"
    return len(la)


def same_bytes(one, merged, name):
    a, b = open(f"{one}/{name}", "rb").read(), open(f"{merged}/{name}", "rb").read()
    assert a == b, f"{name} differs ({len(a)} vs {len(b)} bytes)"


def embed_vs_merged(one, merged):
    for name in ("texts.jsonl", "kv.npy", "hidden.npy"):
        same_bytes(one, merged, name)
    ra, rb = json.load(open(f"{one}/results.json")), json.load(open(f"{merged}/results.json"))
    TIMING.update(EMBED_TIMING)
    why = same(ra, rb, "results.json")
    assert why is None, why
    # The merged wall times are the shards' summed: present wherever one machine has them.
    for x, y in zip(ra["results"], rb["results"]):
        assert (x["seconds_per_1000_texts"] is None) == (y["seconds_per_1000_texts"] is None), (x, y)
    assert any(r["seconds_per_1000_texts"] for r in rb["results"]), "no timing in the merged results"
    n = same_reports(one, merged)
    print(f"ok: {merged} = {one}: {len(ra['results'])} results, the .npy files, report.md {n} lines")


def one_vs_merged(one, merged, loose=False):
    ia = json.load(open(f"{one}/run.json"))["identity"]
    ib = json.load(open(f"{merged}/run.json"))["identity"]
    assert ia == ib, f"identity {ia} vs {ib}"
    if kind(one) == "embed":
        return embed_vs_merged(one, merged)
    a, b = records(one), records(merged)
    assert [r["index"] for r in b] == sorted(r["index"] for r in b), "merged samples not in dataset order"
    assert [r["index"] for r in a] == [r["index"] for r in b], (
        f"indices {[r['index'] for r in a]} vs {[r['index'] for r in b]}")
    for ra, rb in zip(a, b):
        why = same(ra, rb, f"sample {ra['index']}")
        assert why is None, why
    if loose:
        print(f"ok: {merged} = {one} within {TOL}: {len(a)} samples")
        return
    n = same_reports(one, merged)
    if kind(one) == "router_eval":
        same_bytes(one, merged, "accuracy-vs-tokens.svg")
    print(f"ok: {merged} = {one}: {len(a)} samples, report.md {n} lines")


def fnv_fmix(s):
    h = 14695981039346656037
    for byte in s.encode():
        h = ((h ^ byte) * 1099511628211) & M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def shards(n, dirs):
    total = 0
    for i, d in enumerate(dirs):
        info = json.load(open(f"{d}/run.json"))
        assert info["identity"]["shard"] == f"{i}/{n}", info["identity"].get("shard")
        expect = [k for k in info["shard"]["all_indices"]]
        for r in records(d):
            key = (r["text"] if kind(d) == "embed" else r["id"]) or str(r["index"])
            assert fnv_fmix(key) % n == i, f"{d}: sample {r['index']} (id {key}) hashes to {fnv_fmix(key) % n}"
        mine = [k for k in expect]  # every shard records the whole run's samples
        total += len(records(d))
    assert total == len(mine), f"{total} records in the shards, {len(mine)} in the run"
    print(f"ok: {n} shards, {total} samples, each where its hash puts it")


def relabel(dirs):
    for d in dirs:
        rs = records(d)
        for r in rs:
            if "samples" in r:  # eval sample: per question, its samples
                for j, smp in enumerate(r["samples"]):
                    smp["correct"] = (r["index"] + j) % 3 != 0
            else:
                r["correct"] = r["index"] % 3 != 0
        with open(f"{d}/samples.jsonl", "w") as f:
            for r in rs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "relabel":
        relabel(sys.argv[2:])
    elif sys.argv[1] == "one-vs-merged":
        loose = "--loose" in sys.argv
        if loose:
            TOL = 1e-3
        one_vs_merged(sys.argv[2], sys.argv[3], loose)
    else:
        shards(int(sys.argv[2]), sys.argv[3:])
