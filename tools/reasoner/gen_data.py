"""Writes the reasoner's held-out test set and its training set (seeded, test questions excluded by value).

  python3 tools/reasoner/gen_data.py --out DIR [--seed 1234] [--test-per-level 100] [--train 90000]

test.jsonl:  {"question", "answer", "difficulty", "expression"}
train.jsonl: the same fields plus "mode" (fast|slow) and "target" (the assistant's completion, ending in <|im_end|>)
router-train.jsonl: questions for training the fast/slow router (kvlens router label), drawn from another seed,
             test questions excluded; same fields as test.jsonl
"""

import argparse
import json
import os

import arith


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--test-per-level", type=int, default=100)
    ap.add_argument("--train", type=int, default=90000)
    ap.add_argument("--router-train-per-level", type=int, default=400)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    test = arith.held_out_split(args.seed, args.test_per_level)
    with open(os.path.join(args.out, "test.jsonl"), "w") as f:
        for row in test:
            f.write(json.dumps(row) + "\n")
    held = {r["expression"] for r in test}
    stream = arith.training_stream(args.seed + 1, held)
    with open(os.path.join(args.out, "train.jsonl"), "w") as f:
        for _ in range(args.train):
            level, mode, nums, ops = next(stream)
            row = {"question": arith.question_text(nums, ops), "answer": str(arith.evaluate(nums, ops)),
                   "difficulty": level, "expression": arith.expression(nums, ops), "mode": mode,
                   "target": arith.completion(nums, ops, mode)}
            f.write(json.dumps(row) + "\n")
    rng, used = arith.random.Random(args.seed + 2), set()
    with open(os.path.join(args.out, "router-train.jsonl"), "w") as f:
        for level in arith.LEVELS:
            n = 0
            while n < args.router_train_per_level:
                nums, ops = arith.make_question(rng, level)
                e = arith.expression(nums, ops)
                if e in held or e in used:
                    continue
                used.add(e)
                f.write(json.dumps({"question": arith.question_text(nums, ops), "answer": str(arith.evaluate(nums, ops)),
                                    "difficulty": level, "expression": e}) + "\n")
                n += 1
    print(f"{len(test)} test questions, {args.train} training examples -> {args.out}")


if __name__ == "__main__":
    main()
