"""The arithmetic task family of the project's hybrid reasoning model: questions, scratchpads, chat format.

Difficulty levels (each a chain of + and - applied left to right, every intermediate result >= 0):
  1: 2-digit + 1-digit        3: 3-digit +/- 3-digit           5: 3-digit, three operations
  2: 2-digit +/- 2-digit      4: 3-digit, two operations

Slow mode writes the column-by-column work, least significant digit first with every carry/borrow spelt
out (Lee et al. 2023: this is what makes multi-digit arithmetic learnable for a small transformer), then
assembles the digits of each intermediate result. Fast mode answers directly.
"""

import random

LEVELS = (1, 2, 3, 4, 5)

# Qwen3's chat format, exactly as kvlens renders it (src/engine/chat_template.cpp, render_qwen3).
IM_START, IM_END, THINK, THINK_END, EOT = "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"
SPECIAL_TOKENS = (EOT, IM_START, IM_END, THINK, THINK_END)
THINK_EMPTY = "<think>\n\n</think>\n\n"


def _num(rng, digits):
    lo = 10 ** (digits - 1) if digits > 1 else 0
    return rng.randint(lo, 10**digits - 1)


def make_question(rng, level):
    """Returns (operands, operators) for one question of the given level."""
    if level == 1:
        return [_num(rng, 2), _num(rng, 1)], ["+"]
    digits, n_ops = {2: (2, 1), 3: (3, 1), 4: (3, 2), 5: (3, 3)}[level]
    while True:
        nums = [_num(rng, digits) for _ in range(n_ops + 1)]
        ops = [rng.choice("+-") for _ in range(n_ops)]
        acc, ok = nums[0], True
        for op, b in zip(ops, nums[1:]):
            acc = acc + b if op == "+" else acc - b
            ok = ok and acc >= 0
        if ok:
            return nums, ops


def expression(nums, ops):
    return str(nums[0]) + "".join(op + str(b) for op, b in zip(ops, nums[1:]))


def evaluate(nums, ops):
    acc = nums[0]
    for op, b in zip(ops, nums[1:]):
        acc = acc + b if op == "+" else acc - b
    return acc


def column_work(a, op, b):
    """Lines of one binary operation, least significant digit first; returns (lines, result).

    Each line rewrites what is left of both operands, the carry (or borrow) and the result digits so far:

        347+285 c0        the digits to use next are always the last of each operand, right before
        34+28 c1 2        the operator and before " c", so every lookup is local ("detailed scratchpad",
        3+2 c1 32         Lee et al. 2023); the next line drops them and prepends the new result digit
        + c0 632
        =632
    """
    xs, ys = str(a), str(b)
    carry, digits = 0, ""
    lines = [f"{xs}{op}{ys} c{carry}"]
    while xs or ys or (op == "+" and carry):
        x = int(xs[-1]) if xs else 0
        y = int(ys[-1]) if ys else 0
        xs, ys = xs[:-1], ys[:-1]
        if op == "+":
            s = x + y + carry
            d, carry = s % 10, s // 10
        else:
            s = x - y - carry
            d, carry = s % 10, 1 if s < 0 else 0
        digits = str(d) + digits
        lines.append(f"{xs}{op}{ys} c{carry} {digits}")
    result = int(digits)
    lines.append(f"={result}")
    assert result == (a + b if op == "+" else a - b)
    return lines, result


def scratchpad(nums, ops):
    lines, acc = [], nums[0]
    for op, b in zip(ops, nums[1:]):
        step, acc = column_work(acc, op, b)
        lines += step
    return "\n".join(lines)


def prompt(question, mode):
    """Chat prompt up to the assistant turn; fast mode carries the empty think block, as Qwen3's template."""
    p = f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"
    return p + THINK_EMPTY if mode == "fast" else p


def completion(nums, ops, mode):
    answer = f"Answer: {evaluate(nums, ops)}{IM_END}"
    if mode == "fast":
        return answer
    return f"{THINK}\n{scratchpad(nums, ops)}\n{THINK_END}\n\n{answer}"


def question_text(nums, ops):
    return f"What is {expression(nums, ops)}?"


def held_out_split(seed, n_test_per_level):
    """Test questions, drawn first; training questions are later drawn from the rest of the space."""
    rng = random.Random(seed)
    test = []
    for level in LEVELS:
        seen = set()
        while len(seen) < n_test_per_level:
            nums, ops = make_question(rng, level)
            e = expression(nums, ops)
            if e not in seen:
                seen.add(e)
                test.append({"question": question_text(nums, ops), "answer": str(evaluate(nums, ops)),
                             "difficulty": level, "expression": e})
    return test


def training_stream(seed, test_expressions):
    """Endless training examples (level, mode, nums, ops): uniform over levels and modes, test excluded."""
    rng = random.Random(seed)
    while True:
        level = rng.choice(LEVELS)
        nums, ops = make_question(rng, level)
        if expression(nums, ops) in test_expressions:
            continue
        yield level, rng.choice(("fast", "slow")), nums, ops
