"""Reasoner v2's data: the two test mixes, the router-train questions and the training set (issue #13).

  python3 tools/reasoner/gen_data_v2.py --out DIR [--seed 2613] [--train 40000]

Writes, in this order (each seeded; fixed before any v2 measurement):

gsm8k-like.jsonl     112 questions, mostly level 1: every level-1 question no training ever saw (the 100 of
                     v1's test set: level 1 has only 900 questions, 2-digit + 1-digit, and v1's 90000 training
                     examples cover the other 800), 8 of level 2 and 4 of level 3 (89.3 / 7.1 / 3.6 %).
                     From v1's per-level table (docs/results/reasoner-arith: fast 100 / 51 / 36 %, slow
                     100 / 97 / 90 %) always-fast is expected about 5 points below always-slow here.
math500-like.jsonl   400 questions of levels 3-5: 80 / 160 / 160 (20 / 40 / 40 %); there v1's fast mode is
                     36 / 1 / 0 % against 90 / 88 / 69 % slow.
router-train.jsonl   800 questions for the fast/slow router, 160 per level, disjoint from both mixes.
train.jsonl          v2's training examples (arith_v2.training_stream), none of a mix's questions.

Levels 2-5 of the mixes exclude, by value, every question of v1's training set (regenerated here from
gen_data.py's seeds: v2 starts from v1's weights) and of v1's test and router-train sets; v2's training stream
excludes both mixes.
"""

import argparse
import json
import os
import random

import arith
import arith_v2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GSM8K_LIKE = {2: 8, 3: 4}  # plus all 100 held-out level-1 questions
MATH500_LIKE = {3: 80, 4: 160, 5: 160}
ROUTER_PER_LEVEL = 160


def v1_training_expressions(seed=1234, n_train=90000):
    """The questions of v1's train.jsonl (gen_data.py --seed 1234 --train 90000), by value."""
    test = arith.held_out_split(seed, 100)
    stream = arith.training_stream(seed + 1, {r["expression"] for r in test})
    return {arith.expression(nums, ops) for _, _, nums, ops in (next(stream) for _ in range(n_train))}


def row(nums, ops, level):
    return {"question": arith.question_text(nums, ops), "answer": str(arith.evaluate(nums, ops)),
            "difficulty": level, "expression": arith.expression(nums, ops)}


def draw(rng, counts, excluded):
    out = []
    for level, n in sorted(counts.items()):
        got = 0
        while got < n:
            nums, ops = arith.make_question(rng, level)
            e = arith.expression(nums, ops)
            if e in excluded:
                continue
            excluded.add(e)
            out.append(row(nums, ops, level))
            got += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=2613)
    ap.add_argument("--train", type=int, default=40000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    v1_train = v1_training_expressions()
    v1_test = [json.loads(line) for line in open(os.path.join(ROOT, "data/arith-reasoner/test.jsonl"))]
    v1_router = [json.loads(line) for line in open(os.path.join(ROOT, "data/arith-reasoner/router-train.jsonl"))]
    level1 = [r for r in v1_test if r["difficulty"] == 1]
    all_level1 = {f"{a}+{b}" for a in range(10, 100) for b in range(10)}
    unseen1 = all_level1 - v1_train
    assert {r["expression"] for r in level1} == unseen1, "level 1: v1's held-out questions are the unseen ones"
    print(f"v1 training set: {len(v1_train)} distinct questions; level 1 unseen: {len(unseen1)}")

    excluded = set(v1_train) | {r["expression"] for r in v1_test} | {r["expression"] for r in v1_router}
    rng = random.Random(args.seed)
    gsm = [dict(r) for r in level1] + draw(rng, GSM8K_LIKE, excluded)
    math = draw(rng, MATH500_LIKE, excluded)
    mixes = {r["expression"] for r in gsm + math}
    assert len(mixes) == len(gsm) + len(math)

    rng = random.Random(args.seed + 1)
    router, used = [], set(mixes)
    for level in arith.LEVELS:
        router += draw(rng, {level: ROUTER_PER_LEVEL}, used)

    for name, rows in (("gsm8k-like", gsm), ("math500-like", math), ("router-train", router)):
        with open(os.path.join(args.out, f"{name}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{name}: {len(rows)} questions")

    stream = arith_v2.training_stream(args.seed + 2, mixes)
    with open(os.path.join(args.out, "train.jsonl"), "w") as f:
        for _ in range(args.train):
            level, mode, nums, ops, target = next(stream)
            r = row(nums, ops, level)
            f.write(json.dumps({**r, "mode": mode, "target": target}) + "\n")
    print(f"{args.train} training examples -> {args.out}")


if __name__ == "__main__":
    main()
