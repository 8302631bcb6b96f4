"""Prints the pinned values of reasoner_v2_fixture_test.cpp for a v2 GGUF (first test question of each level
of data/arith-reasoner/test.jsonl: the fast answer and the number on the first answer line of the greedy slow
trace, through `kvlens generate`), as C++ initialisers to paste into the test.

  python3 tools/reasoner/pin_answers_v2.py --kvlens build/bin/kvlens --gguf tools/reasoner/arith-reasoner-v2.gguf
"""

import argparse
import json
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvlens", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(os.path.join(ROOT, "data/arith-reasoner/test.jsonl"))]
    questions = [next(r for r in rows if r["difficulty"] == level)["question"] for level in range(1, 6)]

    def run(q, mode):
        cmd = [args.kvlens, "generate", "-m", args.gguf, "-p", q, "--think", mode, "-n", "800", "-t",
               str(args.threads)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout[:-1]

    for q in questions:
        m = re.search(r"So the answer is (\d+)\.", run(q, "on"))
        print(f'    {{"{q}", "{run(q, "off")}", "{m.group(1) if m else "NONE"}"}},')


if __name__ == "__main__":
    main()
