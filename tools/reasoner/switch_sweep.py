"""Routing + one mid-answer switch, replayed offline from a `kvlens router label --windows N` run: the router's
prediction on the prompt and on every window (numpy forward of the router JSON), a switch where `router eval
--check-every N` would take it, and the outcome the label run measured there (the cut probe's answer after a
slow -> fast switch; the slow answer after fast -> slow). Greedy decoding makes the replay exact: at the
default delta it reproduces `router eval`'s routed + switch row (checked on router-reasoner-v2: 70.8 % at
0.538 of always-slow's tokens, both ways). Prints accuracy and tokens / always-slow per switch delta.

  python3 tools/reasoner/switch_sweep.py --router ROUTER.json --labels LABEL_DIR [--threshold 50] [--deltas 0,10,20]
"""

import argparse
import json
import os
import sys

import numpy as np

# The project's numpy reference of the router (the same one the tests hold kvlens' classifier against).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "python"))
import router_ref  # noqa: E402


def load_router(path):
    r = router_ref.load_router(path)
    return lambda rows: router_ref.predict(r, np.asarray(rows, dtype=np.float32).astype(np.float64))


def replay(recs, predict, threshold, delta):
    correct = tokens = 0
    for q in recs:
        mode = "fast" if predict([q["features"]])[0] < threshold else "slow"
        ws = [w for w in q["windows"] if w["mode"] == mode]
        out = (q[mode]["correct"], q[mode]["n_generated"])
        for w, d in zip(ws, predict([w["features"] for w in ws]) if ws else []):
            if mode == "slow" and w["in_think"] and d < threshold - delta:
                out = (w["cut"]["correct"], w["at"] + w["cut"]["switch_tokens"] + w["cut"]["tokens"])
                break
            if mode == "fast" and d > threshold + delta:
                out = (q["slow"]["correct"], w["at"] + q["slow"]["n_generated"])
                break
        correct += out[0]
        tokens += out[1]
    return correct, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--threshold", type=float, default=50)
    ap.add_argument("--deltas", default="0,10,20,30,40,45")
    args = ap.parse_args()
    predict = load_router(args.router)
    recs = [json.loads(line) for line in open(os.path.join(args.labels, "labels.jsonl"))]
    n = len(recs)
    slow_tok = sum(q["slow"]["n_generated"] for q in recs)
    slow_acc = 100 * sum(q["slow"]["correct"] for q in recs) / n
    print(f"{n} questions; always-slow {slow_acc:.1f} %\n")
    print("| switch delta | accuracy % | vs always-slow | tokens / always-slow |\n|--:|--:|--:|--:|")
    for delta in (float(x) for x in args.deltas.split(",")):
        k, t = replay(recs, predict, args.threshold, delta)
        print(f"| {delta:g} | {100 * k / n:.1f} | {100 * k / n - slow_acc:+.1f} | {t / slow_tok:.3f} |")


if __name__ == "__main__":
    main()
