"""Independent numpy forward pass for llama.cpp GGUF models (reference for kvlens K/V capture).

Reads weights and hyper-parameters with the PyPI ``gguf`` package (``GGUFReader`` and
``gguf.quants.dequantize``) and recomputes, from scratch, what llama.cpp's graph computes for the
architectures ``llama``, ``qwen2`` and ``qwen3``:

* per layer l: K_l after RoPE (and, for qwen3, after the per-head ``attn_k_norm``), shape
  ``[T, n_head_kv * head_dim]``, head h in columns ``h*D .. h*D+D-1`` -- the values llama.cpp writes
  into the KV cache;
* per layer l: V_l, same shape;
* hidden states ``[n_layer + 1, T, n_embd]``: index 0 is the token embeddings, index l+1 the residual
  stream after layer l (llama.cpp's ``l_out-<l>``);
* final logits ``[T, n_vocab]``.

Conventions checked against llama.cpp's documented behaviour (not its code):

* GGUF matrices are stored ``ne = [in, out]``; dequantized they are numpy ``[out, in]``, so a linear
  layer is ``x @ W.T``.
* RoPE: ``llama`` uses llama.cpp's NORM mode, rotating adjacent pairs (2i, 2i+1) of each head (the
  HF->GGUF converter permuted the Q/K rows so that this equals HF's rotate-half on the original
  weights); ``qwen2``/``qwen3`` use NEOX mode, rotating (i, i + n_rot/2). Only the first
  ``rope.dimension_count`` dims of a head rotate. theta_i = pos * base^(-2i/n_rot), divided by
  ``rope_freqs.weight[i]`` when that tensor exists, and pos scaled by 1/factor for linear scaling.
* Tied embeddings: without ``output.weight`` the LM head is ``token_embd.weight``.

Math is done in float64 (weights are kept as float32 after dequantization and cast per use). By default
the matmuls are exact on the dequantized weights; ``emulate_act_quant=True`` additionally rounds each
matmul input the way llama.cpp's CPU backend does for quantized weights (8-bit blocks), which is how the
tests measure the noise floor that separates llama.cpp from exact math on a quantized model.
Nothing here is ported from llama.cpp's Python; the only dependency besides numpy is the GGUF reader.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

try:
    import gguf
except ImportError as e:  # pragma: no cover - environment problem
    raise ImportError("reference_forward needs the PyPI 'gguf' package (pip install -r "
                      "tests/python/requirements.txt)") from e

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")
ROPE_NORM = "norm"  # rotate (2i, 2i+1)
ROPE_NEOX = "neox"  # rotate (i, i + n_rot/2)
_ROPE_TYPE = {"llama": ROPE_NORM, "qwen2": ROPE_NEOX, "qwen3": ROPE_NEOX}


@dataclasses.dataclass
class HParams:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    rms_eps: float
    rope_base: float
    n_rot: int
    rope_type: str
    rope_scale: float  # positions are multiplied by this (1/linear factor)
    attn_scale: float


@dataclasses.dataclass
class ForwardResult:
    tokens: np.ndarray  # int64 [T]
    pos: np.ndarray  # int64 [T]
    k: np.ndarray  # [n_layer, T, n_head_kv*head_dim_k]
    v: np.ndarray  # [n_layer, T, n_head_kv*head_dim_v]
    hidden: np.ndarray  # [n_layer+1, T, n_embd]
    logits: np.ndarray  # [T, n_vocab]


class GGUFModel:
    """A GGUF model whose tensors are dequantized lazily (float32) and cached."""

    def __init__(self, path: str):
        self.path = str(path)
        self.reader = gguf.GGUFReader(self.path)
        self._tensors = {t.name: t for t in self.reader.tensors}
        self._cache: Dict[str, np.ndarray] = {}
        self.arch = self.meta("general.architecture")
        if self.arch not in SUPPORTED_ARCHS:
            raise ValueError(f"{self.path}: architecture {self.arch!r} not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        self.hp = self._read_hparams()
        if self.has("blk.0.ffn_gate_inp.weight"):
            raise ValueError(f"{self.path}: mixture-of-experts FFN not supported")

    # ---- metadata -------------------------------------------------------------------------
    def meta(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    def _req(self, key: str):
        v = self.meta(key)
        if v is None:
            raise KeyError(f"{self.path}: missing GGUF metadata {key!r}")
        if isinstance(v, list):
            if len(set(v)) != 1:
                raise ValueError(f"{self.path}: per-layer {key!r} not supported: {v}")
            v = v[0]
        return v

    def _read_hparams(self) -> HParams:
        a = self.arch
        n_embd = int(self._req(f"{a}.embedding_length"))
        n_head = int(self._req(f"{a}.attention.head_count"))
        n_head_kv = int(self._req(f"{a}.attention.head_count_kv")
                        if self.meta(f"{a}.attention.head_count_kv") is not None else n_head)
        head_dim_k = int(self.meta(f"{a}.attention.key_length", n_embd // n_head))
        head_dim_v = int(self.meta(f"{a}.attention.value_length", n_embd // n_head))
        n_rot = int(self.meta(f"{a}.rope.dimension_count", head_dim_k))
        if n_rot % 2 or n_rot > head_dim_k:
            raise ValueError(f"bad rope.dimension_count {n_rot} for head dim {head_dim_k}")
        scaling = self.meta(f"{a}.rope.scaling.type", "none")
        factor = float(self.meta(f"{a}.rope.scaling.factor", 1.0) or 1.0)
        if scaling in ("none", None) or factor == 1.0:
            rope_scale = 1.0
        elif scaling == "linear":
            rope_scale = 1.0 / factor
        else:
            raise ValueError(f"{self.path}: rope scaling {scaling!r} (factor {factor}) not supported")
        attn_scale = float(self.meta(f"{a}.attention.scale", 0.0) or 0.0)
        if attn_scale == 0.0:
            attn_scale = 1.0 / np.sqrt(head_dim_k)
        emb = self._tensors["token_embd.weight"]
        n_vocab = int(emb.shape[1])  # ne = [n_embd, n_vocab]
        return HParams(
            arch=a,
            n_layer=int(self._req(f"{a}.block_count")),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim_k,
            head_dim_v=head_dim_v,
            n_ff=int(self._req(f"{a}.feed_forward_length")),
            n_vocab=n_vocab,
            rms_eps=float(self._req(f"{a}.attention.layer_norm_rms_epsilon")),
            rope_base=float(self.meta(f"{a}.rope.freq_base", 10000.0)),
            n_rot=n_rot,
            rope_type=_ROPE_TYPE[a],
            rope_scale=rope_scale,
            attn_scale=attn_scale,
        )

    # ---- tensors ---------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self._tensors

    def w(self, name: str) -> np.ndarray:
        """Dequantized tensor as float32, numpy order (reverse of ggml ne): matrices are [out, in]."""
        a = self._cache.get(name)
        if a is None:
            t = self._tensors.get(name)
            if t is None:
                raise KeyError(f"{self.path}: missing tensor {name!r}")
            a = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            expect = tuple(int(x) for x in reversed(list(t.shape)))
            a = a.reshape(expect)
            self._cache[name] = a
        return a

    def qtype(self, name: str) -> str:
        return self._tensors[name].tensor_type.name

    def w_opt(self, name: str) -> Optional[np.ndarray]:
        return self.w(name) if self.has(name) else None

    def vocab(self) -> List[str]:
        return list(self.meta("tokenizer.ggml.tokens", []))


# ---- building blocks -------------------------------------------------------------------------
def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * weight


def linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None) -> np.ndarray:
    y = x @ w.astype(np.float64).T
    if b is not None:
        y = y + b
    return y


# Types whose llama.cpp CPU dot product first quantizes the activations to 8 bits in blocks of 32 with an
# F16 scale (vec_dot_type Q8_0 or Q8_1), or in blocks of 256 with an F32 scale (Q8_K).
_ACT_Q8_32 = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "MXFP4"}
_ACT_Q8_256 = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
               "IQ1_S", "IQ1_M", "IQ4_XS", "TQ1_0", "TQ2_0"}


def quantize_activations(x: np.ndarray, weight_type: str) -> np.ndarray:
    """Approximate emulation of the rounding llama.cpp's CPU matmul applies to its *input* before the
    dot product with a weight of `weight_type` (a documented property of ggml's quantized formats, not
    ported code): 8-bit symmetric blocks, scale = max|x| / 127, round to nearest. F16 weights: the input
    is rounded to F16. F32 weights: unchanged. Used only to measure/explain the noise floor."""
    if weight_type in _ACT_Q8_32 or weight_type in _ACT_Q8_256:
        blk = 32 if weight_type in _ACT_Q8_32 else 256
        n = x.shape[-1]
        if n % blk:
            return x
        xb = x.reshape(*x.shape[:-1], n // blk, blk)
        d = np.abs(xb).max(axis=-1, keepdims=True) / 127.0
        if blk == 32:
            # the block scale is stored as F16; rounding with the F16 scale matched llama.cpp's output
            # on SmolLM2 better than rounding with the F32 one (layer-0 V: 1-cos 1.4e-5 vs 3.5e-5)
            d = d.astype(np.float16).astype(np.float64)
        safe = np.where(d > 0, d, 1.0)
        q = np.clip(np.sign(xb) * np.floor(np.abs(xb) / safe + 0.5), -127, 127)
        return (q * d).reshape(x.shape)
    if weight_type == "F16":
        return x.astype(np.float16).astype(np.float64)
    return x


def rope_cos_sin(hp: HParams, pos: np.ndarray, freq_factors: Optional[np.ndarray]):
    i = np.arange(hp.n_rot // 2, dtype=np.float64)
    inv_freq = hp.rope_base ** (-2.0 * i / hp.n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors[: hp.n_rot // 2].astype(np.float64)
    ang = (pos.astype(np.float64) * hp.rope_scale)[:, None] * inv_freq[None, :]  # [T, n_rot/2]
    return np.cos(ang), np.sin(ang)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_rot: int, mode: str) -> np.ndarray:
    """x: [T, H, D]. Rotates the first n_rot dims of every head; cos/sin: [T, n_rot/2]."""
    out = x.copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    if mode == ROPE_NORM:
        x0 = x[..., 0:n_rot:2]
        x1 = x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * c - x1 * s
        out[..., 1:n_rot:2] = x0 * s + x1 * c
    elif mode == ROPE_NEOX:
        h = n_rot // 2
        x0 = x[..., 0:h]
        x1 = x[..., h:n_rot]
        out[..., 0:h] = x0 * c - x1 * s
        out[..., h:n_rot] = x0 * s + x1 * c
    else:
        raise ValueError(mode)
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """q: [T, Hq, D], k: [T, Hkv, D], v: [T, Hkv, Dv] -> [T, Hq*Dv]. GQA: q head h uses kv head
    h // (Hq/Hkv)."""
    T, Hq, _ = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"n_head {Hq} not a multiple of n_head_kv {Hkv}")
    g = Hq // Hkv
    kk = np.repeat(k, g, axis=1)  # [T, Hq, D]
    vv = np.repeat(v, g, axis=1)
    scores = np.einsum("thd,shd->hts", q, kk) * scale  # [Hq, T, T]
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    scores = np.where(mask[None], -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    o = np.einsum("hts,shd->thd", p, vv)  # [T, Hq, Dv]
    return o.reshape(T, -1)


# ---- forward ---------------------------------------------------------------------------------
def forward(model: GGUFModel, tokens: Sequence[int], pos: Optional[Sequence[int]] = None,
            want_logits: bool = True, max_layers: Optional[int] = None,
            emulate_act_quant: bool = False) -> ForwardResult:
    """Run the model on `tokens` (positions `pos`, default 0..T-1).

    max_layers: stop after that many layers (the arrays keep n_layer rows; later rows are NaN, no logits).
    emulate_act_quant: round each matmul input the way llama.cpp's CPU backend does for the weight's
    type (see quantize_activations); off = exact math on the dequantized weights."""
    hp = model.hp

    def lin(inp: np.ndarray, name: str, bias: Optional[str] = None) -> np.ndarray:
        if emulate_act_quant:
            inp = quantize_activations(inp, model.qtype(name))
        return linear(inp, model.w(name), model.w_opt(bias) if bias else None)

    toks = np.asarray(tokens, dtype=np.int64)
    if toks.ndim != 1 or toks.size == 0:
        raise ValueError("tokens must be a non-empty 1-D sequence")
    if toks.min() < 0 or toks.max() >= hp.n_vocab:
        raise ValueError(f"token id out of range [0, {hp.n_vocab})")
    T = toks.size
    p = np.arange(T, dtype=np.int64) if pos is None else np.asarray(pos, dtype=np.int64)
    if p.shape != (T,):
        raise ValueError("pos must have the same length as tokens")

    emb = model.w("token_embd.weight")  # [n_vocab, n_embd]
    x = emb[toks].astype(np.float64)
    cos, sin = rope_cos_sin(hp, p, model.w_opt("rope_freqs.weight"))

    Dk, Dv, Hq, Hkv = hp.head_dim_k, hp.head_dim_v, hp.n_head, hp.n_head_kv
    n_run = hp.n_layer if max_layers is None else max(0, min(hp.n_layer, int(max_layers)))
    ks = np.full((hp.n_layer, T, Hkv * Dk), np.nan, dtype=np.float64)
    vs = np.full((hp.n_layer, T, Hkv * Dv), np.nan, dtype=np.float64)
    hidden = np.full((hp.n_layer + 1, T, hp.n_embd), np.nan, dtype=np.float64)
    hidden[0] = x

    for il in range(n_run):
        b = f"blk.{il}."
        h = rms_norm(x, model.w(b + "attn_norm.weight"), hp.rms_eps)
        q = lin(h, b + "attn_q.weight", b + "attn_q.bias")
        k = lin(h, b + "attn_k.weight", b + "attn_k.bias")
        v = lin(h, b + "attn_v.weight", b + "attn_v.bias")
        q = q.reshape(T, Hq, Dk)
        k = k.reshape(T, Hkv, Dk)
        v = v.reshape(T, Hkv, Dv)
        if hp.arch == "qwen3":
            q = rms_norm(q, model.w(b + "attn_q_norm.weight"), hp.rms_eps)
            k = rms_norm(k, model.w(b + "attn_k_norm.weight"), hp.rms_eps)
        q = apply_rope(q, cos, sin, hp.n_rot, hp.rope_type)
        k = apply_rope(k, cos, sin, hp.n_rot, hp.rope_type)
        ks[il] = k.reshape(T, -1)
        vs[il] = v.reshape(T, -1)

        attn = causal_attention(q, k, v, hp.attn_scale)
        attn = lin(attn, b + "attn_output.weight", b + "attn_output.bias")
        x = x + attn

        h = rms_norm(x, model.w(b + "ffn_norm.weight"), hp.rms_eps)
        gate = lin(h, b + "ffn_gate.weight")
        up = lin(h, b + "ffn_up.weight")
        x = x + lin(silu(gate) * up, b + "ffn_down.weight")
        hidden[il + 1] = x

    logits = np.empty((T, 0))
    if want_logits and n_run == hp.n_layer:
        h = rms_norm(x, model.w("output_norm.weight"), hp.rms_eps)
        # tied embeddings: without output.weight the LM head is token_embd
        logits = lin(h, "output.weight" if model.has("output.weight") else "token_embd.weight")
    return ForwardResult(tokens=toks, pos=p, k=ks, v=vs, hidden=hidden, logits=logits)


# ---- helpers for tests / CLI -----------------------------------------------------------------
def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine over the last axis; rows where both are zero count as 1."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    dot = np.sum(a * b, axis=-1)
    denom = na * nb
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), 0.0)
    return np.where(both_zero, 1.0, c)


def words_to_ids(model: GGUFModel, words: Sequence[str]) -> List[int]:
    """Look up whole tokens in a GPT-2 byte-level vocab; a leading space is written as 'Ġ'."""
    index = {t: i for i, t in enumerate(model.vocab())}
    ids = []
    for w in words:
        key = w.replace(" ", "\u0120")
        if key not in index:
            raise KeyError(f"{w!r} ({key!r}) is not a single token of this vocab")
        ids.append(index[key])
    return ids


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="path to a .gguf")
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--words", help="space-separated whole-word tokens, '_' marks a leading space, "
                                    "e.g. 'The _capital _of _France _is'")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args(argv)
    m = GGUFModel(args.model)
    print(f"arch={m.arch} {m.hp}")
    if args.tokens:
        ids = [int(s) for s in args.tokens.split(",")]
    elif args.words:
        ids = words_to_ids(m, [w.replace("_", " ") for w in args.words.split()])
    else:
        ids = words_to_ids(m, ["The", " capital", " of", " France", " is"])
    vocab = m.vocab()
    print("tokens:", ids, [vocab[i] for i in ids] if vocab else "")
    t0 = time.perf_counter()
    r = forward(m, ids)
    t1 = time.perf_counter()
    r2 = forward(m, ids)
    t2 = time.perf_counter()
    del r2
    print(f"forward: {t1 - t0:.2f}s first (incl. dequantization), {t2 - t1:.2f}s second")
    lg = r.logits[-1]
    pr = np.exp(lg - lg.max())
    pr /= pr.sum()
    top = np.argsort(-lg)[: args.top]
    for i in top:
        name = vocab[i] if vocab else str(i)
        print(f"  {i:6d} {name!r:20} logit={lg[i]:8.3f} p={pr[i]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
