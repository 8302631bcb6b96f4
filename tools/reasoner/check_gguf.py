"""Checks that the exported GGUF computes, in llama.cpp, what the PyTorch model computes.

  python3 tools/reasoner/check_gguf.py --run DIR --kvlens build/bin/kvlens

For a few chat prompts: tokenisation (kvlens vs encode()), per-layer K (after q/k-norm and RoPE), V, and the
residual stream after every layer (kvlens dump) against the PyTorch forward of model.pt; then greedy
continuations (kvlens generate vs PyTorch argmax decoding) must be identical.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arith  # noqa: E402
from model import Config, Qwen3, apply_rope, decode, encode  # noqa: E402

PROMPTS = ["What is 47+8?", "What is 503-278?", "What is 171+800+765?"]


def load_model(run):
    cfg_all = json.load(open(os.path.join(run, "config.json")))
    cfg = Config(**{k: v for k, v in cfg_all.items() if k in Config.__dataclass_fields__})
    m = Qwen3(cfg)
    m.load_state_dict(torch.load(os.path.join(run, "model.pt")))
    m.eval()
    return m


@torch.no_grad()
def torch_kv_hidden(m, ids):
    c = m.cfg
    x = m.embed(torch.tensor([ids]))
    T = len(ids)
    ks, vs, hs = [], [], [x[0].numpy()]
    for b in m.blocks:
        h = b.attn_norm(x)
        k = b.k_norm(b.wk(h).view(1, T, c.n_kv_heads, c.head_dim))
        k = apply_rope(k, m.cos[:T, None, :], m.sin[:T, None, :])
        ks.append(k.reshape(T, -1).numpy())
        vs.append(b.wv(h).reshape(T, -1).numpy())
        x = b(x, m.cos, m.sin)
        hs.append(x[0].numpy())
    return np.stack(ks), np.stack(vs), np.stack(hs)


@torch.no_grad()
def torch_greedy(m, ids, n):
    out = []
    for _ in range(n):
        t = int(m(torch.tensor([ids + out]))[0, -1].argmax())
        out.append(t)
        if t == encode(arith.IM_END)[0]:
            break
    return out


def cosine_min(a, b):
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="training output directory (model.pt, config.json, GGUF)")
    ap.add_argument("--kvlens", required=True)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    gguf_path = args.gguf or os.path.join(args.run, "arith-reasoner.gguf")
    m = load_model(args.run)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for q in PROMPTS:
            for mode in ("fast", "slow"):
                text = arith.prompt(q, mode)
                ids = encode(text)
                npz = os.path.join(tmp, "d.npz")
                subprocess.run([args.kvlens, "dump", "-m", gguf_path, "-p", text, "--no-bos", "--hidden", "-o", npz,
                                "-t", str(args.threads)], check=True, capture_output=True)
                d = np.load(npz)
                tok_ok = d["tokens"].tolist() == ids
                k, v, h = torch_kv_hidden(m, ids)
                ck, cv, ch = cosine_min(d["k"], k), cosine_min(d["v"], v), cosine_min(d["hidden"], h)
                gen = subprocess.run([args.kvlens, "generate", "-m", gguf_path, "-p", q, "--think",
                                      "off" if mode == "fast" else "on", "-n", "256", "-t", str(args.threads)],
                                     check=True, capture_output=True, text=True).stdout
                ref = decode(torch_greedy(m, ids, 256)).replace(arith.IM_END, "")
                same = gen.strip() == ref.strip()
                print(f"{mode:4s} {q:24s} tokens {'==' if tok_ok else '!='}  min cosine K {ck:.6f} V {cv:.6f} "
                      f"hidden {ch:.6f}  greedy {'==' if same else '!='}")
                if not same:
                    print(f"   kvlens: {gen!r}\n   torch:  {ref!r}")
                ok = ok and tok_ok and min(ck, cv, ch) > 0.999 and same
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
