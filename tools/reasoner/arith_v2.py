"""Reasoner v2's slow traces: solve with v1's scratchpad, write the answer inside the think block, then verify
it a variable number of times before closing the block, as R1 / Qwen3 do (issue #13). Fast mode is v1's.

A slow v2 completion:

    <think>
    347+285 c0            the v1 scratchpad of the whole expression (arith.scratchpad)
    ...
    =436
    So the answer is 436.
    Wait, let me double-check.        1-4 verification rounds, each one of:
    436+196 c0                          inverse of the last operation in the same scratchpad format,
    ...                                 ending "That gives back 632. Yes, 436 is right."
    =632                                recompute of the last operation ("Still 436. Good.")
    That gives back 632. Yes, 436 is right.
    Let me check the last digit: ...    the last digits of the last operation against the answer's
    </think>

    Answer: 436<|im_end|>

Some traces (`p_wrong`) write one wrong digit in the last operation of the first solve; the first
verification round (inverse, or a recompute where the inverse would go negative) finds it ("Wait, that's
wrong."), the last operation is redone and a corrected answer line follows, then 0-2 more rounds.

Cut traces: the think block closed by kvlens' own close text ("\n</think>\n\n", chat_template.cpp) at a random
character of a slow trace's think content, then "Answer: X" where X is the answer of the latest complete answer
line before the cut, or, before any, the true answer (what fast mode answers).
"""

import random

import arith

CLOSE = "\n" + arith.THINK_END + "\n\n"  # what kvlens appends to close a think block (switch, cut probe, DEER)
ROUNDS = (1, 2, 3, 4)
ROUND_WEIGHTS = (0.3, 0.3, 0.25, 0.15)
OPENERS = ("Wait, let me double-check.", "Let me verify.", "Hmm, let me check that again.", "Wait, let me make sure.")
KINDS = ("inverse", "recompute", "digit")
KIND_WEIGHTS = (0.45, 0.25, 0.3)


def answer_line(n):
    return f"So the answer is {n}."


def _last_op(nums, ops):
    """(a, op, b, r): the last operation of the chain, a the accumulator before it."""
    acc = nums[0]
    for op, b in zip(ops[:-1], nums[1:-1]):
        acc = acc + b if op == "+" else acc - b
    op, b = ops[-1], nums[-1]
    return acc, op, b, (acc + b if op == "+" else acc - b)


def column_work_wrong(a, op, b, rng):
    """column_work(a, op, b) with one result digit off by one (the carries stay right); (lines, wrong result)."""
    lines, r = arith.column_work(a, op, b)
    digit_lines = [i for i in range(1, len(lines) - 1)]  # lines that write a new leading result digit
    while True:
        i = rng.choice(digit_lines)
        head, digits = lines[i].rsplit(" ", 1)
        d = int(digits[0])
        nd = (d + rng.choice((1, -1))) % 10
        new_digits = str(nd) + digits[1:]
        # later lines carry this digit along (it stays in every later line's result digits)
        k = len(digits)
        out = list(lines[:i]) + [f"{head} {new_digits}"]
        for line in lines[i + 1 : -1]:
            h, ds = line.rsplit(" ", 1)
            ds = ds[: len(ds) - k] + new_digits
            out.append(f"{h} {ds}")
        wrong = int(out[-1].rsplit(" ", 1)[1])
        if wrong != r and len(str(wrong)) == len(str(r)):  # no leading zero: the slip is a plain digit
            out.append(f"={wrong}")
            return out, wrong


def _inverse(r, op, b):
    """The inverse of r = a op b: r - b or r + b; None where it would go negative."""
    if op == "+":
        return None if r < b else (r, "-", b)
    return (r, "+", b)


def verify_round(rng, a, op, b, shown, kind):
    """One verification round of the answer `shown` (which is right: shown == a op b)."""
    out = [rng.choice(OPENERS)]
    if kind == "inverse" and _inverse(shown, op, b):
        x, iop, y = _inverse(shown, op, b)
        lines, back = arith.column_work(x, iop, y)
        out += lines + [f"That gives back {back}. Yes, {shown} is right."]
    elif kind in ("inverse", "recompute"):
        lines, r = arith.column_work(a, op, b)
        out += [f"Let me compute {a}{op}{b} again."] + lines + [f"Still {r}. Good."]
    else:
        x, y = a % 10, b % 10
        d = (x + y) % 10 if op == "+" else (x - y) % 10
        lhs = f"{x}+{y}" if op == "+" else (f"{x}-{y}" if x >= y else f"1{x}-{y}")
        out += [f"Let me check the last digit: {lhs} ends in {d}, and {shown} ends in {shown % 10}. Good."]
    return out


def slow_trace(nums, ops, rng, wrong=False):
    """The think content (between "<think>\\n" and "\\n</think>") and the answer lines' (end offset, value)."""
    a, op, b, r = _last_op(nums, ops)
    lines = arith.scratchpad(nums, ops).split("\n")
    rounds = rng.choices(ROUNDS, ROUND_WEIGHTS)[0]
    answers = []  # (line index of the answer line, value)
    if wrong:
        first = lines[: len(lines) - _n_lines(a, op, b)]
        bad, shown = column_work_wrong(a, op, b, rng)
        lines = first + bad
        lines.append(answer_line(shown))
        answers.append((len(lines) - 1, shown))
        out = [rng.choice(OPENERS)]
        inv = _inverse(shown, op, b)
        if inv and rng.random() < 0.7:
            x, iop, y = inv
            work, back = arith.column_work(x, iop, y)
            out += work + [f"That gives {back}, not {a}. Wait, that's wrong."]
        else:
            work, _ = arith.column_work(a, op, b)
            out += [f"Let me compute {a}{op}{b} again."] + work + [f"That is {r}, not {shown}. Wait, that's wrong."]
        lines += out
        redo, _ = arith.column_work(a, op, b)
        lines += [f"Let me redo {a}{op}{b}."] + redo + [answer_line(r)]
        answers.append((len(lines) - 1, r))
        rounds = rng.choice((0, 1, 2))
    else:
        lines.append(answer_line(r))
        answers.append((len(lines) - 1, r))
    for _ in range(rounds):
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        lines += verify_round(rng, a, op, b, r, kind)
    text = "\n".join(lines)
    # character offset just after each answer line (its final "."), in the think content
    offsets, pos = [], 0
    ends = {}
    for i, line in enumerate(lines):
        pos += len(line)
        ends[i] = pos
        pos += 1
    for i, v in answers:
        offsets.append((ends[i], v))
    return text, offsets


def _n_lines(a, op, b):
    return len(arith.column_work(a, op, b)[0])


def slow_completion(content, answer):
    return f"{arith.THINK}\n{content}\n{arith.THINK_END}\n\nAnswer: {answer}{arith.IM_END}"


def cut_completion(content, offsets, true_answer, k):
    """The think block closed after k characters of content (kvlens' close text), then the answer reached."""
    reached = true_answer
    for end, v in offsets:
        if end <= k:
            reached = v
    return f"{arith.THINK}\n{content[:k]}{CLOSE}Answer: {reached}{arith.IM_END}", reached


def training_stream(seed, excluded, p_fast=0.3, p_cut=0.3, p_wrong=0.12):
    """Endless (level, mode, nums, ops, target): mode fast | slow | cut; questions in `excluded` skipped."""
    rng = random.Random(seed)
    while True:
        level = rng.choice(arith.LEVELS)
        nums, ops = arith.make_question(rng, level)
        if arith.expression(nums, ops) in excluded:
            continue
        u = rng.random()
        r = arith.evaluate(nums, ops)
        if u < p_fast:
            yield level, "fast", nums, ops, arith.completion(nums, ops, "fast")
            continue
        content, offsets = slow_trace(nums, ops, rng, wrong=rng.random() < p_wrong)
        if u < p_fast + p_cut:
            k = rng.randint(0, len(content))
            yield level, "cut", nums, ops, cut_completion(content, offsets, r, k)[0]
        else:
            yield level, "slow", nums, ops, slow_completion(content, r)
