"""Prints the pinned greedy answers of reasoner_fixture_test.cpp for a GGUF (first test question of each level,
fast and slow mode, through `kvlens generate`), as C++ initialisers to paste into the test.

  python3 tools/reasoner/pin_answers.py --kvlens build/bin/kvlens --gguf tools/reasoner/arith-reasoner.gguf
"""

import argparse
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvlens", required=True)
    ap.add_argument("--gguf", required=True)
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(os.path.join(ROOT, "data/arith-reasoner/test.jsonl"))]
    questions = [next(r for r in rows if r["difficulty"] == level)["question"] for level in range(1, 6)]

    def run(q, mode):
        cmd = [args.kvlens, "generate", "-m", args.gguf, "-p", q, "--think", mode, "-n", "320", "-t", "2"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout[:-1]

    def c(s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    for q in questions:
        print(f"        {{{c(q)},\n         {c(run(q, 'off'))},\n         {c(run(q, 'on'))}}},")


if __name__ == "__main__":
    main()
