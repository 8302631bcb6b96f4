#!/usr/bin/env python3
"""Writes data/arith.jsonl: a plainly described generated set of small integer arithmetic questions.

Why: SmolLM2-135M-Instruct, the one real model available here, answers almost none of GSM8K / MGSM /
MATH-500 correctly and answers CommonsenseQA near chance while ignoring the answer format, so none of them
gives the mix of correct and incorrect answers that a KV-CoE evaluation needs. Small arithmetic does.

Five kinds, 80 questions each, in a fixed shuffled order (seed 2026): a+b with one-digit operands, a+b with
two-digit operands, a-b with two-digit operands (a > b), a*b times-table (2..9 times 2..12), a*b with a two-digit
and a one-digit operand. Fields: id, question, answer (integer as text), kind.
Regenerate: python3 scripts/make_arith_dataset.py > data/arith.jsonl
"""
import json
import random

rng = random.Random(2026)
kinds = {
    "add1": lambda: (rng.randint(1, 9), "+", rng.randint(1, 9)),
    "add2": lambda: (rng.randint(10, 99), "+", rng.randint(10, 99)),
    "sub2": lambda: (lambda a, b: (max(a, b), "-", min(a, b)))(rng.randint(10, 99), rng.randint(10, 99)),
    "mul1": lambda: (rng.randint(2, 9), "*", rng.randint(2, 12)),
    "mul21": lambda: (rng.randint(11, 99), "*", rng.randint(2, 9)),
}
rows, seen = [], set()
for kind, make in kinds.items():
    n = 0
    while n < 80:
        a, op, b = make()
        if (a, op, b) in seen or (op == "-" and a == b):
            continue
        seen.add((a, op, b))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        rows.append({"question": f"What is {a} {word} {b}?", "answer": str(value), "kind": kind})
        n += 1
rng.shuffle(rows)
for i, r in enumerate(rows):
    print(json.dumps({"id": i, **r}))
