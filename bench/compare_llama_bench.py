#!/usr/bin/env python3
"""kvlens' generate loop vs llama.cpp's own llama-bench, built from the same pinned tree (issue #14 part 3).

Per model and per round, in alternating order (A B / B A / ...), so that drift hits both alike:
  llama-bench  -p P -n 0  -r 1          prefill P tokens                        (pp)
  llama-bench  -p 0 -n D -d P -r 1      decode D tokens after a P-token context (tg @ depth P)
  bench-generate --modes off,scores     kvlens' engine generate() (sampler chain + per-step softmax
                                        statistics, as `kvlens generate` runs it): prefill P, then D decode steps,
                                        scores off and with the scorer of `kvlens generate --scores` (KV-CoE,
                                        layer-axis KV chains, hidden-state CoE)
Same model, threads, batch (-b = -ub = --batch, as kvlens' sessions use n_ubatch = n_batch), flash attention
setting, F16 KV cache. Both time inside the process (model loading excluded); each process warms up first.
Prints medians and ratios of medians (kvlens / llama-bench), and the median of per-round paired ratios;
writes the whole record (every run, the machine, versions, commands) as JSON.

  python3 bench/compare_llama_bench.py --models smollm2-135m,qwen2.5-coder-0.5b -t 2 --reps 15 \\
      --out runs/bench/generate-vs-llama-bench.json
  python3 bench/compare_llama_bench.py --quick        (smoke: 1 thread, tiny counts, seconds)
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def llama_bench(args, model, p, n, d):
    cmd = [args.llama_bench, "-m", model, "-t", str(args.threads), "-b", str(args.batch), "-ub", str(args.batch),
           "-fa", args.flash_attn, "-p", str(p), "-n", str(n), "-d", str(d), "-r", "1", "-o", "json"]
    rc, out, err, wall, _ = bl.time_peak(cmd)
    if rc != 0:
        raise SystemExit(f"llama-bench failed ({rc}): {' '.join(cmd)}\n{err[-2000:]}")
    tests = json.loads(out)
    assert len(tests) == 1, tests
    return {"tps": tests[0]["avg_ts"], "cmd": cmd, "wall_s": wall, "build_commit": tests[0].get("build_commit"),
            "cpu_info": tests[0].get("cpu_info"), "n_prompt": tests[0].get("n_prompt"),
            "n_gen": tests[0].get("n_gen"), "n_depth": tests[0].get("n_depth")}


def kvlens_bench(args, model):
    cmd = [args.bench_generate, "-m", model, "-t", str(args.threads), "--batch", str(args.batch),
           "--flash-attn", args.flash_attn, "--kv-source", args.kv_source, "--prompt-tokens", str(args.prompt),
           "--decode-tokens", str(args.decode), "--reps", "1", "--modes", "off,scores"]
    rc, out, err, wall, _ = bl.time_peak(cmd)
    if rc != 0:
        raise SystemExit(f"bench-generate failed ({rc}): {' '.join(cmd)}\n{err[-2000:]}")
    rows = {r["mode"]: r for r in bl.parse_json_lines(out)}
    for r in rows.values():
        if r["n_decode"] < args.decode:
            bl.log(f"warning: kvlens {r['mode']} stopped after {r['n_decode']} decode steps ({r['stop']}), "
                   f"not {args.decode}: its decode tokens/s is over fewer steps")
    return {"rows": rows, "cmd": cmd, "wall_s": wall}


def one_model(args, name):
    model = bl.resolve_model(name)
    bl.log(f"== {name}: {model}")
    runs = []
    for r in range(args.reps):
        steps = ["llama", "kvlens"] if r % 2 == 0 else ["kvlens", "llama"]
        rec = {"round": r, "order": steps}
        for s in steps:
            if s == "llama":
                rec["llama_pp"] = llama_bench(args, model, args.prompt, 0, 0)
                rec["llama_tg"] = llama_bench(args, model, 0, args.decode, args.prompt)
            else:
                rec["kvlens"] = kvlens_bench(args, model)
        k = rec["kvlens"]["rows"]
        bl.log(f"round {r}: llama-bench pp {rec['llama_pp']['tps']:.1f} tg {rec['llama_tg']['tps']:.1f} | "
               f"kvlens off pp {k['off']['prefill_tps']:.1f} tg {k['off']['decode_tps']:.1f} | "
               f"scores pp {k['scores']['prefill_tps']:.1f} tg {k['scores']['decode_tps']:.1f}")
        runs.append(rec)

    def col(f):
        return [f(x) for x in runs]

    lpp, ltg = col(lambda x: x["llama_pp"]["tps"]), col(lambda x: x["llama_tg"]["tps"])
    summary = {}
    for mode in ("off", "scores"):
        kpp = col(lambda x: x["kvlens"]["rows"][mode]["prefill_tps"])
        ktg = col(lambda x: x["kvlens"]["rows"][mode]["decode_tps"])
        summary[mode] = {
            "prefill_tps_median": bl.median(kpp), "decode_tps_median": bl.median(ktg),
            "prefill_ratio_of_medians": bl.ratio(bl.median(kpp), bl.median(lpp)),
            "decode_ratio_of_medians": bl.ratio(bl.median(ktg), bl.median(ltg)),
            "prefill_median_paired_ratio": bl.median([a / b for a, b in zip(kpp, lpp)]),
            "decode_median_paired_ratio": bl.median([a / b for a, b in zip(ktg, ltg)]),
        }
    summary["llama_bench"] = {"prefill_tps_median": bl.median(lpp), "decode_tps_median": bl.median(ltg)}
    print(f"\n{name} ({model}), threads {args.threads}, batch {args.batch}, fa {args.flash_attn}, "
          f"prefill {args.prompt}, decode {args.decode} @ depth {args.prompt}, {args.reps} interleaved rounds")
    print(f"{'':22s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'pp ratio':>9s} {'tg ratio':>9s} "
          f"{'pp paired':>10s} {'tg paired':>10s}")
    print(f"{'llama-bench':22s} {bl.median(lpp):14.1f} {bl.median(ltg):13.1f}")
    for mode, label in (("off", "kvlens, capture off"), ("scores", "kvlens, KV-CoE on")):
        s = summary[mode]
        print(f"{label:22s} {s['prefill_tps_median']:14.1f} {s['decode_tps_median']:13.1f} "
              f"{s['prefill_ratio_of_medians']:9.3f} {s['decode_ratio_of_medians']:9.3f} "
              f"{s['prefill_median_paired_ratio']:10.3f} {s['decode_median_paired_ratio']:10.3f}")
    print("targets (issue #14): decode ratio >= 0.98 capture off, >= 0.97 KV-CoE on")
    return {"model_name": name, "model_path": model, "summary": summary, "runs": runs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(bl.MODEL_NAMES),
                    help="comma-separated fetch_model.sh names or GGUF paths")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15, help="interleaved rounds")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--flash-attn", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--kv-source", default="cache", choices=["graph", "cache"], help="kvlens' capture source")
    ap.add_argument("--kvlens-bin-dir", default=None, help="where bench-generate is (default: build/bin, "
                    "else build-bench/kvlens/bin)")
    ap.add_argument("--llama-bin-dir", default=os.path.join(bl.ROOT, "build-bench", "llama.cpp", "bin"),
                    help="llama-bench from bench/build_llama_tools.sh")
    ap.add_argument("--out", default=None, help="JSON record (default: none with --quick, else "
                    "runs/bench/generate-vs-llama-bench.json)")
    ap.add_argument("--quick", action="store_true", help="smoke: SmolLM2, 1 thread, prefill 32, decode 8, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.models, args.threads, args.reps, args.prompt, args.decode = "smollm2-135m", 1, 2, 32, 8
    elif args.out is None:
        args.out = os.path.join(bl.ROOT, "runs", "bench", "generate-vs-llama-bench.json")
    dirs = [args.kvlens_bin_dir] if args.kvlens_bin_dir else [os.path.join(bl.ROOT, "build", "bin"),
                                                              os.path.join(bl.ROOT, "build-bench", "kvlens", "bin")]
    args.bench_generate = bl.default_bin(dirs, "bench-generate")
    args.llama_bench = os.path.join(args.llama_bin_dir, "llama-bench")
    for b in (args.bench_generate, args.llama_bench):
        if not os.path.exists(b):
            raise SystemExit(f"missing {b}: build it (bench/README.md)")
    record = {"comparison": "kvlens generate loop vs llama-bench", "machine": bl.machine(),
              "versions": bl.versions(), "binaries": {"bench_generate": args.bench_generate,
                                                      "llama_bench": args.llama_bench},
              "settings": {k: getattr(args, k) for k in ("threads", "reps", "prompt", "decode", "batch",
                                                         "flash_attn", "kv_source", "quick")},
              "models": []}
    for name in args.models.split(","):
        record["models"].append(one_model(args, name))
    record["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    bl.write_record(args.out, record)


if __name__ == "__main__":
    main()
