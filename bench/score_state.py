#!/usr/bin/env python3
"""Per-sequence score state vs the KV cache bytes of the same sequence (issue #14 part 3), at 1K and 8K tokens,
per model: runs bench-score-state (bench/bench_score_state.cpp: a real decode of N tokens with the scorer of
`kvlens generate --scores` subscribed; CoeScorer::state_bytes() against llama_state_seq_get_size() of the
sequence) and prints the ratio. Bytes, not timings: the result does not depend on the machine's load.

  python3 bench/score_state.py --models smollm2-135m,qwen2.5-coder-0.5b -t 2 --out runs/bench/score-state.json
  python3 bench/score_state.py --quick        (smoke: 64 and 256 tokens)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(bl.MODEL_NAMES))
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--tokens", default="1024,8192")
    ap.add_argument("--kvlens-bin-dir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.models, args.threads, args.tokens = "smollm2-135m", 1, "64,256"
    elif args.out is None:
        args.out = os.path.join(bl.ROOT, "runs", "bench", "score-state.json")
    dirs = [args.kvlens_bin_dir] if args.kvlens_bin_dir else [os.path.join(bl.ROOT, "build", "bin"),
                                                              os.path.join(bl.ROOT, "build-bench", "kvlens", "bin")]
    exe = bl.default_bin(dirs, "bench-score-state")
    if not os.path.exists(exe):
        raise SystemExit(f"missing {exe}: build it (bench/README.md)")
    record = {"comparison": "score state vs KV cache bytes per sequence", "machine": bl.machine(),
              "versions": bl.versions(), "binary": exe, "models": []}
    print(f"{'model':22s} {'tokens':>7s} {'score state B':>14s} {'KV cache B':>12s} {'ratio':>8s}  "
          f"(token-axis / layer-axis / hidden)")
    for name in args.models.split(","):
        model = bl.resolve_model(name)
        cmd = [exe, "-m", model, "-t", str(args.threads), "--tokens", args.tokens]
        rc, out, err, wall, rss = bl.time_peak(cmd)
        if rc != 0:
            raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{err[-2000:]}")
        rows = bl.parse_json_lines(out)
        for r in rows:
            print(f"{name:22s} {r['tokens']:7d} {r['score_state_bytes']:14d} {r['kv_cache_seq_state_bytes']:12d} "
                  f"{100 * r['ratio_state_over_kv']:7.3f}%  ({r['kv_coe_token_bytes']} / {r['kv_layer_bytes']} / "
                  f"{r['hs_coe_bytes']})")
        record["models"].append({"model_name": name, "model_path": model, "cmd": cmd, "rows": rows,
                                 "wall_s": wall, "peak_rss_kb": rss})
    print("target (issue #14): score state <= 1% of the sequence's KV cache at 1K tokens")
    bl.write_record(args.out, record)


if __name__ == "__main__":
    main()
