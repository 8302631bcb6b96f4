"""kvlens serve --batch-invariant (src/engine/batch_invariance.h) on SmolLM2-135M, a model whose greedy tokens
llama.cpp's default batched kernels do change (bench/batch_invariance.sh; the server's own comparison in
docs/results/bench/README.md): requests sent alone, then 8 at once on 4 slots (sequence ids and cells reused)
give the same text and bit-identical scores. The control, a server without the flag, must differ somewhere on
the same requests, or this test could not tell."""
import concurrent.futures
import http.client
import json
import os

import pytest
from serve_helper import Server

BIN = os.environ["KVLENS_BIN"]
MODEL = os.environ["KVLENS_SMOLLM2"]

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May?",
    "What is the capital of France?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did "
    "she earn?",
    "Write a haiku about the sea.",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her "
    "parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. How "
    "much more money does Betty need to buy the wallet?",
    "Name three colours.",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "Explain what a prime number is.",
]
MAX_TOKENS = [64, 12, 64, 30, 64, 16, 64, 48]


def post(port, i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=280)
    c.request("POST", "/v1/chat/completions",
              json.dumps({"messages": [{"role": "user", "content": QUESTIONS[i]}], "temperature": 0,
                          "max_tokens": MAX_TOKENS[i]}), {"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    assert r.status == 200, text
    j = json.loads(text)
    return j["choices"][0]["message"]["content"], j["kvlens"]["scores"]


def alone_and_together(args, ctx=1024):
    s = Server(BIN, MODEL, ["-t", "2", "--parallel", "4", "--ctx", str(ctx), "--queue", "32"] + args)
    try:
        alone = [post(s.port, i) for i in range(len(QUESTIONS))]
        order = list(range(len(QUESTIONS))) * 2  # 16 requests on 4 slots: later ones reuse freed slots
        with concurrent.futures.ThreadPoolExecutor(len(order)) as pool:
            together = list(pool.map(lambda i: post(s.port, i), order))
    finally:
        s.stop()
    return alone, order, together


# ctx 1024 per slot: the 16 answers' cells all fit at once; 256: a finished answer's cells are kept until the
# batch empties (cell order, engine/batcher.h), so later requests wait for cells: the admission path.
@pytest.mark.parametrize("ctx", [1024, 256])
def test_concurrency_changes_no_bit_with_batch_invariant(ctx):
    alone, order, together = alone_and_together(["--batch-invariant"], ctx)
    for i, (text, scores) in zip(order, together):
        assert text == alone[i][0], (i, text, alone[i][0])
        assert scores == alone[i][1], i  # every score to the bit (JSON round trip of the same floats)


def test_control_the_default_kernels_do_change_these_answers():
    alone, order, together = alone_and_together([])
    changed = sum(r != alone[i] for i, r in zip(order, together))
    assert changed > 0, "no answer or score changed without --batch-invariant: the test above proves nothing"
