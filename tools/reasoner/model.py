"""A Qwen3 decoder in PyTorch that computes what llama.cpp's qwen3 graph computes, its byte-level tokenizer, and
the GGUF export.

Same architecture as exported (reasoner-notes.md): RMSNorm pre-norm blocks, grouped-query attention with
per-head RMSNorm on q and k before RoPE, NEOX RoPE (rotate halves), SwiGLU MLP, tied output embedding.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arith import EOT, IM_END, IM_START, SPECIAL_TOKENS, THINK, THINK_END

N_BYTES = 256


@dataclass
class Config:
    n_vocab: int = N_BYTES + len(SPECIAL_TOKENS)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 64
    d_ff: int = 768
    rope_theta: float = 10000.0
    eps: float = 1e-6
    n_ctx: int = 512


# ---- tokenizer: one token per byte (GPT-2 byte-to-unicode names, so llama.cpp's BPE loads it with no
# merges) plus the special tokens as single tokens.


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


SPECIAL_IDS = {s: N_BYTES + i for i, s in enumerate(SPECIAL_TOKENS)}


def encode(text):
    ids, i = [], 0
    while i < len(text):
        for s, sid in SPECIAL_IDS.items():
            if text.startswith(s, i):
                ids.append(sid)
                i += len(s)
                break
        else:
            ids.extend(text[i].encode("utf-8"))
            i += 1
    return ids


def decode(ids):
    inv = {v: k for k, v in SPECIAL_IDS.items()}
    out, buf = [], bytearray()
    for t in ids:
        if t < N_BYTES:
            buf.append(t)
        else:
            out.append(buf.decode("utf-8", "replace"))
            buf = bytearray()
            out.append(inv[t])
    out.append(buf.decode("utf-8", "replace"))
    return "".join(out)


# ---- model


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(cfg, n, device=None):
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    ang = torch.outer(torch.arange(n, dtype=torch.float32), inv)  # [T, D/2]
    return torch.cos(ang).to(device), torch.sin(ang).to(device)


def apply_rope(x, cos, sin):
    # NEOX: dimension i pairs with i + D/2 (llama.cpp LLAMA_ROPE_TYPE_NEOX, used by qwen3).
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.d_model, cfg.head_dim
        self.attn_norm = RMSNorm(d, cfg.eps)
        self.wq = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.wk = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.q_norm = RMSNorm(hd, cfg.eps)
        self.k_norm = RMSNorm(hd, cfg.eps)
        self.ffn_norm = RMSNorm(d, cfg.eps)
        self.w_gate = nn.Linear(d, cfg.d_ff, bias=False)
        self.w_up = nn.Linear(d, cfg.d_ff, bias=False)
        self.w_down = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c = self.cfg
        h = self.attn_norm(x)
        q = self.q_norm(self.wq(h).view(B, T, c.n_heads, c.head_dim))
        k = self.k_norm(self.wk(h).view(B, T, c.n_kv_heads, c.head_dim))
        v = self.wv(h).view(B, T, c.n_kv_heads, c.head_dim)
        q = apply_rope(q, cos[:T, None, :], sin[:T, None, :]).transpose(1, 2)
        k = apply_rope(k, cos[:T, None, :], sin[:T, None, :]).transpose(1, 2)
        v = v.transpose(1, 2)
        rep = c.n_heads // c.n_kv_heads
        k = k.repeat_interleave(rep, dim=1)  # llama.cpp: query head h reads KV head h / rep
        v = v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


class Qwen3(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.n_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.eps)
        cos, sin = rope_tables(cfg, cfg.n_ctx)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        for b in self.blocks:  # GPT-2 style: residual projections scaled down with depth
            for w in (b.wo.weight, b.w_down.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        return self.norm(x) @ self.embed.weight.T  # tied output, as llama.cpp does when `output` is absent


# ---- GGUF export


def export_gguf(model, path, chat_template, meta, name="kvlens arith reasoner"):
    import gguf

    c = model.cfg
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_name(name)
    w.add_description("Hybrid (fast/slow) reasoning model for multi-step integer arithmetic, trained by kvlens")
    w.add_context_length(c.n_ctx)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.d_ff)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.eps)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for k, v in meta.items():
        w.add_string(f"kvlens.{k}", str(v))

    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(N_BYTES)] + list(SPECIAL_TOKENS)
    types = [gguf.TokenType.NORMAL] * N_BYTES
    for s in SPECIAL_TOKENS:  # as Qwen3's GGUF: think tags are user-defined text, the rest control tokens
        types.append(gguf.TokenType.USER_DEFINED if s in (THINK, THINK_END) else gguf.TokenType.CONTROL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    # llama.cpp requires a merges list for BPE; this one merge never applies (byte 0x00 twice).
    w.add_token_merges([f"{b2u[0]} {b2u[0]}"])
    w.add_eos_token_id(SPECIAL_IDS[IM_END])
    w.add_pad_token_id(SPECIAL_IDS[EOT])
    w.add_bos_token_id(SPECIAL_IDS[EOT])
    w.add_add_bos_token(False)
    w.add_chat_template(chat_template)

    def t(name, tensor, f16=True):
        a = tensor.detach().float().cpu().numpy()
        w.add_tensor(name, a.astype(np.float16) if f16 and a.ndim == 2 else a.astype(np.float32))

    t("token_embd.weight", model.embed.weight)
    for i, b in enumerate(model.blocks):
        p = f"blk.{i}."
        t(p + "attn_norm.weight", b.attn_norm.weight)
        t(p + "attn_q.weight", b.wq.weight)
        t(p + "attn_k.weight", b.wk.weight)
        t(p + "attn_v.weight", b.wv.weight)
        t(p + "attn_output.weight", b.wo.weight)
        t(p + "attn_q_norm.weight", b.q_norm.weight)
        t(p + "attn_k_norm.weight", b.k_norm.weight)
        t(p + "ffn_norm.weight", b.ffn_norm.weight)
        t(p + "ffn_gate.weight", b.w_gate.weight)
        t(p + "ffn_up.weight", b.w_up.weight)
        t(p + "ffn_down.weight", b.w_down.weight)
    t("output_norm.weight", model.norm.weight)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def config_dict(cfg):
    return asdict(cfg)
