#!/usr/bin/env python3
"""`kvlens eval coe` vs the CoE reference pipeline (bench/coe_reference.py: Hugging Face transformers on the same
GGUF dequantised to F32, CPU torch, greedy generate with stored hidden states, CoE as the authors' code computes
it), on the same questions (issue #14 part 3).

Per model and round, alternating which goes first (the first round always starts with kvlens: the reference
reads the prompt token ids from its samples.jsonl, so both answer exactly the same inputs):
  kvlens eval coe --dataset D --limit N -t T --parallel P -o <fresh dir>
  .venv-bench/bin/python bench/coe_reference.py --samples <kvlens' samples.jsonl> -t T
Measured: seconds per answer (process wall time / N, model loading included, for both; and the generate-only
time beside it: kvlens' batch_seconds, the reference's per-question seconds), peak RSS of each process
(wait4), and the Spearman rank correlation of the reference's hidden-state CoE-R / CoE-C with kvlens'
hs_coe_r / hs_coe_c over the questions (also restricted to the answers whose tokens are identical).

  python3 bench/compare_coe_reference.py --models smollm2-135m,qwen2.5-coder-0.5b -t 2 --reps 3 \\
      --out runs/bench/eval-coe-vs-reference.json
  python3 bench/compare_coe_reference.py --quick        (smoke: 3 questions, 16 tokens, 1 thread)
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def ranks(v):
    """Average ranks (ties share their mean rank), 1-based."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a, b):
    """Pearson correlation of the average ranks (scipy.stats.spearmanr's definition); pairs with a nan dropped."""
    pairs = [(x, y) for x, y in zip(a, b) if x == x and y == y]
    if len(pairs) < 3:
        return float("nan")
    ra, rb = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else float("nan")


def run_kvlens(args, model, out_dir):
    cmd = [args.kvlens, "eval", "coe", "-m", model, "--dataset", args.dataset, "--limit", str(args.questions),
           "-t", str(args.threads), "--parallel", str(args.parallel), "-o", out_dir]
    if args.max_tokens:
        cmd += ["-n", str(args.max_tokens)]
    rc, out, err, wall, rss = bl.time_peak(cmd)
    if rc != 0:
        raise SystemExit(f"kvlens eval coe failed ({rc}): {' '.join(cmd)}\n{err[-2000:]}")
    rows = sorted((json.loads(l) for l in open(os.path.join(out_dir, "samples.jsonl"))), key=lambda r: r["index"])
    # Generate-only time: each answer's share of the decoding (continuous batching), or in runs before it
    # each static batch's seconds once (every sample of a batch carries the batch's figure).
    batches = {}
    for r in rows:
        if "decode_seconds" in r:
            batches[("answer", r["index"])] = r["decode_seconds"]
        else:
            batches.setdefault((r.get("batch_seconds"), r.get("batch_size")), r.get("batch_seconds") or 0)
    max_tokens = json.load(open(os.path.join(out_dir, "run.json"))).get("identity", {}).get("max_tokens")
    return {"cmd": cmd, "wall_s": wall, "peak_rss_kb": rss, "n": len(rows), "s_per_answer": wall / len(rows),
            "generate_s_per_answer": sum(batches.values()) / len(rows), "rows": rows, "max_tokens": max_tokens}


def run_reference(args, model, samples, max_tokens, out_path):
    cmd = [args.python, os.path.join(bl.ROOT, "bench", "coe_reference.py"), "--model", model, "--samples", samples,
           "--max-tokens", str(max_tokens), "--out", out_path, "-t", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    rc, out, err, wall, rss = bl.time_peak(cmd, env=env)
    if rc != 0:
        raise SystemExit(f"reference failed ({rc}): {' '.join(cmd)}\n{err[-3000:]}")
    lines = [json.loads(l) for l in open(out_path)]
    head, rows = lines[0], lines[1:]
    return {"cmd": cmd, "wall_s": wall, "peak_rss_kb": rss, "n": len(rows), "s_per_answer": wall / len(rows),
            "generate_s_per_answer": sum(r["seconds"] for r in rows) / len(rows), "load_s": head["load_s"],
            "torch": head["torch"], "transformers": head["transformers"], "rows": rows}


def one_model(args, name, work):
    model = bl.resolve_model(name)
    bl.log(f"== {name}: {model}")
    kv_runs, ref_runs = [], []
    first_samples = None
    for r in range(args.reps):
        order = ["kvlens", "ref"] if r % 2 == 0 or first_samples is None else ["ref", "kvlens"]
        for step in order:
            if step == "kvlens":
                d = os.path.join(work, f"{bl.slug(name)}-kvlens-{r}")
                shutil.rmtree(d, ignore_errors=True)
                k = run_kvlens(args, model, d)
                k["round"] = r
                kv_runs.append(k)
                if first_samples is None:
                    first_samples, max_tokens = os.path.join(d, "samples.jsonl"), k["max_tokens"]
                bl.log(f"round {r} kvlens: {k['s_per_answer']:.2f} s/answer, {k['peak_rss_kb'] / 1024:.0f} MB")
            else:
                x = run_reference(args, model, first_samples, max_tokens,
                                  os.path.join(work, f"{bl.slug(name)}-ref-{r}.jsonl"))
                x["round"] = r
                ref_runs.append(x)
                bl.log(f"round {r} reference: {x['s_per_answer']:.2f} s/answer, {x['peak_rss_kb'] / 1024:.0f} MB")

    # Correlation on the first rounds' answers (kvlens' scores are deterministic; the reference's too).
    kv_by = {row["index"]: row for row in kv_runs[0]["rows"]}
    ref_rows = ref_runs[0]["rows"]
    corr = {}
    for s in ("r", "c"):
        a = [kv_by[x["index"]]["scores"][f"hs_coe_{s}"] for x in ref_rows]
        b = [x["scores"][s] for x in ref_rows]
        same = [i for i, x in enumerate(ref_rows) if x["same_tokens_as_kvlens"]]
        corr[f"spearman_hs_coe_{s}"] = spearman(a, b)
        corr[f"spearman_hs_coe_{s}_same_tokens"] = spearman([a[i] for i in same], [b[i] for i in same])
        # The reference's scores with quirks 1-2 removed (kvlens' definition on the reference's states).
        c = [x.get("scores_aligned", {}).get(s, float("nan")) for x in ref_rows]
        corr[f"spearman_hs_coe_{s}_aligned"] = spearman(a, c)
        corr[f"spearman_hs_coe_{s}_aligned_same_tokens"] = spearman([a[i] for i in same], [c[i] for i in same])
    corr["answers_token_identical"] = sum(1 for x in ref_rows if x["same_tokens_as_kvlens"])
    corr["answers"] = len(ref_rows)
    corr["reference_nan_scores"] = sum(1 for x in ref_rows if x["scores"]["c"] != x["scores"]["c"])

    ks, rs = bl.median([k["s_per_answer"] for k in kv_runs]), bl.median([x["s_per_answer"] for x in ref_runs])
    kg = bl.median([k["generate_s_per_answer"] for k in kv_runs])
    rg = bl.median([x["generate_s_per_answer"] for x in ref_runs])
    krss, rrss = max(k["peak_rss_kb"] for k in kv_runs), max(x["peak_rss_kb"] for x in ref_runs)
    summary = {"kvlens_s_per_answer": ks, "reference_s_per_answer": rs, "speedup": bl.ratio(rs, ks),
               "kvlens_generate_s_per_answer": kg, "reference_generate_s_per_answer": rg,
               "generate_speedup": bl.ratio(rg, kg), "kvlens_peak_rss_kb": krss, "reference_peak_rss_kb": rrss,
               "rss_ratio": bl.ratio(krss, rrss), **corr}
    print(f"\n{name} ({model}), {args.dataset}, {kv_runs[0]['n']} questions, threads {args.threads}, kvlens "
          f"--parallel {args.parallel}, {args.reps} rounds (medians); reference: torch {ref_runs[0]['torch']}, "
          f"transformers {ref_runs[0]['transformers']}")
    print(f"{'':12s} {'s/answer':>9s} {'gen s/answer':>13s} {'peak RSS MB':>12s}")
    print(f"{'kvlens':12s} {ks:9.3f} {kg:13.3f} {krss / 1024:12.0f}")
    print(f"{'reference':12s} {rs:9.3f} {rg:13.3f} {rrss / 1024:12.0f}")
    print(f"speedup {summary['speedup']:.2f}x (generate only {summary['generate_speedup']:.2f}x), RSS ratio "
          f"{summary['rss_ratio']:.3f}; Spearman hs_coe_r {corr['spearman_hs_coe_r']:.3f}, hs_coe_c "
          f"{corr['spearman_hs_coe_c']:.3f} ({corr['answers_token_identical']}/{corr['answers']} answers "
          f"token-identical; on those: r {corr['spearman_hs_coe_r_same_tokens']:.3f}, "
          f"c {corr['spearman_hs_coe_c_same_tokens']:.3f}); quirks 1-2 removed: r "
          f"{corr['spearman_hs_coe_r_aligned']:.3f}, c {corr['spearman_hs_coe_c_aligned']:.3f} (token-identical: "
          f"r {corr['spearman_hs_coe_r_aligned_same_tokens']:.3f}, c {corr['spearman_hs_coe_c_aligned_same_tokens']:.3f})")
    print("targets (issue #14): >= 10x faster per answer, <= 1/3 of the reference's peak RSS")
    for k in kv_runs:
        k.pop("rows")
    return {"model_name": name, "model_path": model, "summary": summary, "kvlens_runs": kv_runs,
            "reference_runs": ref_runs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(bl.MODEL_NAMES))
    ap.add_argument("--dataset", default="arith")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=0, help="0: the dataset config's")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1, help="kvlens eval coe --parallel (the reference: 1)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kvlens", default=os.path.join(bl.ROOT, "build", "bin", "kvlens"))
    ap.add_argument("--python", default=os.path.join(bl.ROOT, ".venv-bench", "bin", "python"),
                    help="interpreter with bench/requirements.txt")
    ap.add_argument("--work-dir", default=None, help="eval directories (default: a temporary one, removed)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.models, args.questions, args.max_tokens, args.threads, args.reps = "smollm2-135m", 3, 16, 1, 1
    elif args.out is None:
        args.out = os.path.join(bl.ROOT, "runs", "bench", "eval-coe-vs-reference.json")
    for b in (args.kvlens, args.python):
        if not os.path.exists(b):
            raise SystemExit(f"missing {b} (bench/README.md)")
    tmp = None
    work = args.work_dir or (tmp := tempfile.mkdtemp(prefix="kvlens-bench-coe-"))
    os.makedirs(work, exist_ok=True)
    record = {"comparison": "kvlens eval coe vs the CoE reference pipeline", "machine": bl.machine(),
              "versions": bl.versions(args.kvlens), "binaries": {"kvlens": args.kvlens, "python": args.python},
              "settings": {k: getattr(args, k) for k in ("dataset", "questions", "max_tokens", "threads",
                                                         "parallel", "reps", "quick")},
              "models": []}
    try:
        for name in args.models.split(","):
            record["models"].append(one_model(args, name, work))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    record["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    bl.write_record(args.out, record)


if __name__ == "__main__":
    main()
