"""The issue-#13 table of a `kvlens router eval` run (docs/results/router-reasoner-v2): per mode accuracy with a
95% Wilson interval, mean generated tokens (every token: sampled, switch/exit text, DEER trials), tokens and
wall-clock relative to always-slow, and how often the think block was left early (routed + switch: switched
slow -> fast or fast -> slow; budget / DEER: closed by the policy); then accuracy and tokens per level.
The oracle routing row (fast when fast is right, else slow) comes from the run's own always-fast and
always-slow answers; with --labels (a `router label --windows` run on the same questions) it adds the oracle
rows of that run's report (switching at the windows too).

  python3 tools/reasoner/v2_table.py --eval DIR/eval.jsonl [--labels DIR] [--targets 1,3 | 3,5.7]
"""

import argparse
import json
import math
import os
import re


def wilson(k, n, z=1.96):
    if n == 0:
        return (float("nan"),) * 2
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return 100 * (c - h), 100 * (c + h)


def modes(rec):
    return [k for k, v in rec.items() if isinstance(v, dict) and "correct" in v]


def early(m, r):
    if m == "routed_switch":
        return r.get("switch_at", -1) >= 0
    if m.startswith("budget") or m.startswith("deer"):
        return r.get("exit") in ("budget", "deer")
    return None


def switch_breakdown(recs, line):
    """Where routed + switch left the think block, against the answer line, and the questions it lost (won)
    against always-slow there: the reason a switch costs accuracy."""
    done = re.compile(re.escape(line) + r" \d+\.")
    rows = {}
    for r in recs:
        x, s = r["routed_switch"], r["always_slow"]
        if x["switch_at"] < 0:
            key = f"no switch (started {x['initial']})"
        else:
            think = x["output"].split("</think>")[0]
            key = ("after a complete answer line" if done.search(think) else
                   "inside the answer line" if line in think else "before the answer line")
        n, lost, won = rows.get(key, (0, 0, 0))
        rows[key] = (n + 1, lost + (s["correct"] and not x["correct"]), won + (x["correct"] and not s["correct"]))
    print(f"\nWhere routed + switch left the think block (answer line `{line} N.`):\n")
    print("| where | questions | lost against always-slow | won |")
    print("|---|--:|--:|--:|")
    for k, (n, lost, won) in sorted(rows.items()):
        print(f"| {k} | {n} | {lost} | {won} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--labels", default=None)
    ap.add_argument("--answer-line", default=None, help="a reasoner's answer line, e.g. 'So the answer is': adds "
                                                          "where routed + switch left the think block against it")
    ap.add_argument("--targets", default=None, help="points,ratio: the issue's aim (within POINTS of always-slow "
                                                      "at <= 1/RATIO of its tokens)")
    args = ap.parse_args()
    recs = [json.loads(line) for line in open(args.eval)]
    n = len(recs)
    ms = modes(recs[0])
    slow_tok = sum(r["always_slow"]["n_generated"] for r in recs) / n
    slow_s = sum(r["always_slow"]["seconds"] for r in recs)
    slow_acc = 100 * sum(r["always_slow"]["correct"] for r in recs) / n
    rows = []
    print(f"{n} questions\n")
    print("| mode | accuracy % [95% CI] | vs always-slow (points) | mean tokens | tokens / always-slow "
          "| wall-clock s | wall-clock / always-slow | left the think block early % |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    def row(name, runs, early_left=""):
        """One table row from one run per question; returns (name, accuracy %, mean tokens)."""
        k = sum(x["correct"] for x in runs)
        lo, hi = wilson(k, n)
        tok = sum(x["n_generated"] for x in runs) / n
        sec = sum(x["seconds"] for x in runs)
        acc = 100 * k / n
        print(f"| {name} | {acc:.1f} [{lo:.1f}, {hi:.1f}] | {acc - slow_acc:+.1f} | {tok:.1f} | {tok / slow_tok:.3f} "
              f"| {sec:.1f} | {sec / slow_s:.3f} | {early_left} |")
        return name, acc, tok

    for m in ms:
        e = [early(m, r[m]) for r in recs]
        rows.append(row(m, [r[m] for r in recs], "" if e[0] is None else f"{100 * sum(e) / n:.1f}"))
    # Oracle routing from this run's own always-fast / always-slow answers: fast when fast is right, else slow.
    if "always_fast" in ms and "always_slow" in ms:
        _, acc, tok = row("oracle routing (fast when fast is right)",
                          [r["always_fast"] if r["always_fast"]["correct"] else r["always_slow"] for r in recs])
        rows.append(("oracle routing", acc, tok))
    if args.labels:
        rep = open(os.path.join(args.labels, "report.md")).read()
        for line in rep.splitlines():
            mm = re.match(r"\|\s*(oracle[^|]*?)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", line)
            if mm and not mm[1].startswith("oracle routing (fast"):  # that one is computed above
                acc, tok = float(mm[2]), float(mm[3])
                lo, hi = wilson(round(acc * n / 100), n)
                rows.append((mm[1], acc, tok))
                print(f"| {mm[1]} (label run) | {acc:.1f} [{lo:.1f}, {hi:.1f}] | {acc - slow_acc:+.1f} | {tok:.1f} "
                      f"| {tok / slow_tok:.3f} | | | |")
    if args.targets:
        pts, ratio = (float(x) for x in args.targets.split(","))
        print(f"\nAim: within {pts:g} point(s) of always-slow ({slow_acc:.1f}) at <= 1/{ratio:g} = "
              f"{1 / ratio:.3f} of its tokens ({slow_tok / ratio:.1f}):\n")
        for m, acc, tok in rows:
            d_acc, d_tok = acc - (slow_acc - pts), tok / slow_tok - 1 / ratio
            ok = d_acc >= -1e-9 and d_tok <= 1e-9
            print(f"- {m}: {'meets it' if ok else 'short'} (accuracy {d_acc:+.1f} points against the bound, "
                  f"tokens {d_tok:+.3f} of always-slow against the bound)")
    if args.answer_line and "routed_switch" in ms:
        switch_breakdown(recs, args.answer_line)
    groups = sorted({r.get("group", "") for r in recs}, key=lambda g: (len(g), g))
    if len(groups) < 2:
        return
    print("\nPer level (accuracy % / mean tokens):\n")
    print("| mode | " + " | ".join(f"level {g} (n={sum(r['group'] == g for r in recs)})" for g in groups) + " |")
    print("|---|" + "--:|" * len(groups))
    for m in ms:
        cells = []
        for g in groups:
            rs = [r[m] for r in recs if r["group"] == g]
            cells.append(f"{100 * sum(x['correct'] for x in rs) / len(rs):.1f} / "
                         f"{sum(x['n_generated'] for x in rs) / len(rs):.1f}")
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
