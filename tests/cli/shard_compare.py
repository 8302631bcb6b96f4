"""Checks for shard_merge_test.sh.

one-vs-merged ONE MERGED [--loose]: samples.jsonl equal record for record (numbers within 1e-9 relative,
timing fields excluded), run.json identities equal, report.md equal apart from the command and the decoding
time. --loose: numbers within 1e-3 (texts still exact), no report comparison: for eval coe with --parallel > 1,
where an answer's batch neighbours differ between a shard and the one-machine run, and llama.cpp's batched
kernels move the scores at about 1e-5 (as any change of --parallel does).
relabel DIR...: rewrites each samples.jsonl with a fixed mix of correct and wrong answers (the tiny random
model never finishes an answer, so every real label is "wrong" and the report's metrics would be n/a).
shards N DIR...: every record of shard I hashes to I (FNV-1a 64 of the id, then MurmurHash3's fmix64, % N),
computed here independently of the C++.
"""
import json
import math
import sys

TOL = 1e-9
TIMING = {"batch_seconds", "batch_size", "seconds"}  # wall times, and the batch a coe answer shared
M64 = (1 << 64) - 1


def records(d):
    return [json.loads(line) for line in open(f"{d}/samples.jsonl") if line.strip()]


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
    for i, line in enumerate(lines):
        if line.startswith("kvlens eval") or "decoding time" in line or "tokens/s" in line:
            continue  # the command (inside the Command block) and the wall time
        out.append(line)
    return out


def one_vs_merged(one, merged, loose=False):
    a, b = records(one), records(merged)
    assert [r["index"] for r in b] == sorted(r["index"] for r in b), "merged samples not in dataset order"
    assert [r["index"] for r in a] == [r["index"] for r in b], (
        f"indices {[r['index'] for r in a]} vs {[r['index'] for r in b]}")
    for ra, rb in zip(a, b):
        why = same(ra, rb, f"sample {ra['index']}")
        assert why is None, why
    ia = json.load(open(f"{one}/run.json"))["identity"]
    ib = json.load(open(f"{merged}/run.json"))["identity"]
    assert ia == ib, f"identity {ia} vs {ib}"
    if loose:
        print(f"ok: {merged} = {one} within {TOL}: {len(a)} samples")
        return
    la, lb = report_lines(one), report_lines(merged)
    for x, y in zip(la, lb):
        assert x == y, f"report.md differs:\n  one:    {x}\n  merged: {y}"
    assert len(la) == len(lb), f"report.md lengths {len(la)} vs {len(lb)}"
    assert len(la) > 10, "report.md nearly empty"
    print(f"ok: {merged} = {one}: {len(a)} samples, report.md {len(la)} lines")


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
            key = r["id"] or str(r["index"])
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
