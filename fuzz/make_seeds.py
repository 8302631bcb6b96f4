#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from the project's own files and a few
hand-made cases. Run from anywhere: python3 fuzz/make_seeds.py [ROUTER_FILE]. The corpora are committed;
rerunning rewrites the same files."""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# dataset: a config, "\n----\n", the first lines of its JSONL.
cfg_dir = os.path.join(ROOT, "data", "configs")
for fn in sorted(os.listdir(cfg_dir)):
    if not fn.endswith(".json") or fn.startswith("mgsm-") and fn not in ("mgsm-en.json", "mgsm-en-boxed.json"):
        continue
    text = open(os.path.join(cfg_dir, fn)).read()
    cfg = json.loads(text)
    lines = open(os.path.join(cfg_dir, cfg["file"])).read().splitlines()[:3]
    put("dataset", fn[:-5], text + "\n----\n" + "\n".join(l[:400] for l in lines) + "\n")
put("dataset", "bad-line", '{"name":"x","file":"f","question_field":"q","answer_field":"a","prompt_template":'
    '"{question}","matcher":"boxed","id_field":"id"}\n----\n{"q": "1+1", "a": "2", "id": 1}\n{"q": [1]}\n')

# router_file: a router written by the tests (tiny model), compacted, and two damaged copies.
router = sys.argv[1] if len(sys.argv) > 1 else "/tmp/router_ref.router.json"
if os.path.exists(router):
    j = json.load(open(router))
    put("router_file", "router", json.dumps(j, separators=(",", ":")))
    j["classifier"]["n_features"] += 1
    put("router_file", "router-bad-width", json.dumps(j, separators=(",", ":")))
put("router_file", "empty-object", "{}")
put("router_file", "wrong-format", '{"format": "kvlens-calibration", "version": 1}')

# calibration: the committed calibration files and a logistic one.
sample_dir = os.path.join(ROOT, "docs", "results", "sample-smollm2")
for fn in sorted(os.listdir(sample_dir)):
    if fn.startswith("calibration.") and fn.endswith(".json"):
        put("calibration", fn[len("calibration."):-5], open(os.path.join(sample_dir, fn)).read())
put("calibration", "logistic", json.dumps({
    "format": "kvlens-calibration", "version": 2, "method": "logistic", "score": "combined",
    "features": ["max_prob", "neg_length"], "mean": [0.5, -100.0], "sd": [0.1, 50.0], "w": [1.0, 0.5],
    "bias": -0.2, "ridge": 1.0, "n": 10, "n_correct": 4, "train_auroc": 0.7, "source": "x", "part": "dev"}))

# matchers: output NUL reference.
for i, (out, ref) in enumerate([("Answer: 42", "42"), ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
                                ("The answer is (B) library", "B"), ("1,234.50 apples", "1234.5"),
                                ("\\boxed{18} dollars", "18"), ("Answer: C\nAnswer: A", "A")]):
    put("matchers", f"pair{i}", out + "\0" + ref)

# chat_template: role \x1f content, records separated by \x1e.
for i, msgs in enumerate([[("user", "Hi")], [("system", "Be brief."), ("user", "2+2?")],
                          [("user", "q"), ("assistant", "<think>\nr\n</think>\n\na"), ("user", "again")],
                          [("user", "x"), ("assistant", "prefill")], [("tool", "x")]]):
    put("chat_template", f"chat{i}", "\x1e".join(r + "\x1f" + c for r, c in msgs))
put("chat_template", "gguf-template", "{% for message in messages %}<|im_start|>{{ message['role'] }}")


# gguf: small GGUF v3 files (header, one string key, tensors) and damaged copies.
def gguf(tensors, data_len=None, version=3):
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), 1)
    out += s("general.architecture") + struct.pack("<I", 8) + s("llama")
    off = 0
    for name, n in tensors:
        out += s(name) + struct.pack("<I", 1) + struct.pack("<Q", n) + struct.pack("<I", 0) + struct.pack("<Q", off)
        off += (n * 4 + 31) // 32 * 32
    out += b"\0" * ((32 - len(out) % 32) % 32)
    return out + b"\0" * (off if data_len is None else data_len)


put("gguf", "two-tensors", gguf([("a", 4), ("b", 8)]))
put("gguf", "no-tensors", gguf([]))
put("gguf", "truncated-data", gguf([("a", 64)], data_len=16))
put("gguf", "version-2", gguf([("a", 4)], version=2))

# token_list
for i, t in enumerate(["1,2,3", "0", "-1", "99999999999999999999", "1,,2", " 7", "5,"]):
    put("token_list", f"list{i}", t)

# chat_request / embed_request: bodies as clients send them.
bodies = [
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "q"}]}],
     "temperature": 0.7, "top_p": 0.9, "seed": 1, "stop": ["\n"], "stream": True,
     "stream_options": {"include_usage": True}},
    {"messages": [{"role": "user", "content": "q"}], "n": 3,
     "kvlens": {"select": "weighted", "score": "kv_coe_r", "matcher": "last_number", "abstain_below": 0.2}},
    {"messages": [{"role": "user", "content": "q"}], "think": "auto", "kvlens": {"scores_every": 2}},
    {"messages": [], "max_tokens": -1},
]
for i, b in enumerate(bodies):
    put("chat_request", f"body{i}", json.dumps(b))
for i, b in enumerate([{"input": "hello"}, {"input": ["a", "b"], "encoding_format": "base64"},
                       {"input": [], "model": "x"}, {"input": [1, 2]}, {"input": "x", "dimensions": 4}]):
    put("embed_request", f"body{i}", json.dumps(b))
print("seeds written to", OUT)
