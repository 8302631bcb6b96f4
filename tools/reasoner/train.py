"""Trains the project's hybrid reasoning model and exports it to GGUF (qwen3).

  python3 tools/reasoner/train.py --data DIR --out DIR [--seed 7] [--steps 2250]
      [--init-gguf FILE] [--n-ctx 1024] [--name arith-reasoner-v2] [--ckpt-every 50]

Deterministic from --seed and the data (one thread order, torch.use_deterministic_algorithms). Loss is on the
assistant's completion only; batches hold examples of similar length so little compute goes to padding.

--init-gguf starts from the weights of an exported model (fine-tuning: reasoner v2 from v1); --ckpt-every saves
DIR/ckpt.pt (model, optimizer, data order, step) every N steps and a rerun of the same command resumes from it,
giving the same weights as an uninterrupted run.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arith  # noqa: E402
from model import Config, Qwen3, SPECIAL_IDS, config_dict, encode, export_gguf  # noqa: E402

PAD = SPECIAL_IDS[arith.EOT]


CLOSE = encode("\n" + arith.THINK_END + "\n\n")


def load(path):
    """(tokens, prompt length, level, mode, unlearned): `unlearned` is the (start, end) token range of a cut
    trace's close text, which kvlens appends (switch, cut probe, DEER) and the model must not learn to write
    mid-trace: no loss there; None for other modes."""
    rows = [json.loads(line) for line in open(path)]
    out = []
    for r in rows:
        p = encode(arith.prompt(r["question"], r["mode"]))
        c = encode(r["target"])
        skip = None
        if r["mode"] == "cut":
            at = max(i for i in range(len(c) - len(CLOSE) + 1) if c[i : i + len(CLOSE)] == CLOSE)
            skip = (len(p) + at, len(p) + at + len(CLOSE))
        out.append((p + c, len(p), r["difficulty"], r["mode"], skip))
    return out


def batches(examples, batch_size, rng):
    """Shuffled batches of similar-length examples: sort each window of 32 batches by length, then split."""
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    window = batch_size * 32
    out = []
    for s in range(0, len(idx), window):
        chunk = sorted(idx[s : s + window], key=lambda i: len(examples[i][0]))
        out += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def collate(examples, ids):
    T = max(len(examples[i][0]) for i in ids)
    x = torch.full((len(ids), T), PAD, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.bool)
    for r, i in enumerate(ids):
        toks, n_prompt, skip = examples[i][0], examples[i][1], examples[i][4]
        x[r, : len(toks)] = torch.tensor(toks)
        mask[r, n_prompt : len(toks)] = True  # positions whose token is predicted (completion only)
        if skip:
            mask[r, skip[0] : skip[1]] = False
    return x, mask


def loss_fn(model, x, mask):
    logits = model(x[:, :-1])
    tgt = x[:, 1:].masked_fill(~mask[:, 1:], -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)


@torch.no_grad()
def val_losses(model, val):
    model.eval()
    groups = {}
    for i, (_, _, lv, mode, _) in enumerate(val):
        groups.setdefault((lv, mode), []).append(i)
    out = {}
    for key, ids in sorted(groups.items()):
        x, mask = collate(val, ids)
        out[f"L{key[0]}-{key[1]}"] = round(loss_fn(model, x, mask).item(), 4)
    model.train()
    return out


def load_gguf_weights(model, path):
    """Copies the tensors of an exported GGUF (export_gguf's names; F16 matrices widened) into the model."""
    import gguf

    r = gguf.GGUFReader(path)
    t = {x.name: torch.from_numpy(x.data.astype("float32").copy()) for x in r.tensors}
    names = {"token_embd.weight": model.embed.weight, "output_norm.weight": model.norm.weight}
    for i, b in enumerate(model.blocks):
        p = f"blk.{i}."
        for n, w in (("attn_norm", b.attn_norm), ("attn_q", b.wq), ("attn_k", b.wk), ("attn_v", b.wv),
                     ("attn_output", b.wo), ("attn_q_norm", b.q_norm), ("attn_k_norm", b.k_norm),
                     ("ffn_norm", b.ffn_norm), ("ffn_gate", b.w_gate), ("ffn_up", b.w_up), ("ffn_down", b.w_down)):
            names[p + n + ".weight"] = w.weight
    if set(names) != set(t):
        raise SystemExit(f"{path}: tensors {sorted(set(t) ^ set(names))} do not match the model")
    with torch.no_grad():
        for n, w in names.items():
            if tuple(t[n].shape) != tuple(w.shape):
                raise SystemExit(f"{path}: {n} has shape {tuple(t[n].shape)}, the model {tuple(w.shape)}")
            w.copy_(t[n])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="directory with train.jsonl (gen_data.py)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--val", type=int, default=600, help="training-file examples held back for the loss curve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export-every", type=int, default=0, help="also export a GGUF every N steps (0: at the end only)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=768)
    ap.add_argument("--n-ctx", type=int, default=512, help="context length (RoPE tables, GGUF context_length)")
    ap.add_argument("--init-gguf", default=None, help="start from this exported model's weights")
    ap.add_argument("--name", default="arith-reasoner", help="GGUF file name (without .gguf)")
    ap.add_argument("--ckpt-every", type=int, default=0, help="save DIR/ckpt.pt every N steps (resumed on rerun)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward (fp32 weights, AdamW)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)

    data = load(os.path.join(args.data, "train.jsonl"))
    val, train = data[: args.val], data[args.val :]
    cfg = Config(d_model=args.d_model, n_layers=args.layers, d_ff=args.d_ff, head_dim=args.d_model // 4,
                 n_ctx=args.n_ctx)
    model = Qwen3(cfg)
    if args.init_gguf:
        load_gguf_weights(model, args.init_gguf)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim == 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    queue, step, t0, tokens, cpu0 = [], 0, time.time(), 0, time.process_time()
    ckpt = os.path.join(args.out, "ckpt.pt")
    if args.ckpt_every and os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        queue, step, tokens = st["queue"], st["step"], st["tokens"]
        t0, cpu0 = time.time() - st["elapsed_s"], time.process_time() - st["cpu_s"]
        print(f"resumed from {ckpt} at step {step}", flush=True)
    args.cpu0 = cpu0
    log = open(os.path.join(args.out, "train-log.jsonl"), "a" if step else "w")
    print(f"{n_params / 1e6:.2f}M parameters, {len(train)} training examples, {args.steps} steps", flush=True)
    while step < args.steps:
        if not queue:
            queue = batches(train, args.batch, rng)
        ids = queue.pop()
        x, mask = collate(train, ids)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(model, x, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += x.numel()
        step += 1
        if step % 50 == 0 or step == args.steps:
            rec = {"step": step, "loss": round(loss.item(), 4), "lr": lr_at(step - 1),
                   "elapsed_s": round(time.time() - t0, 1), "tokens": tokens}
            if step % 250 == 0 or step == args.steps:
                rec["val"] = val_losses(model, val)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        if args.export_every and step % args.export_every == 0 and step < args.steps:
            save(model, cfg, args, t0, os.path.join(args.out, f"step{step}"))
        if args.ckpt_every and step % args.ckpt_every == 0 and step < args.steps:
            st = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(),
                  "torch_rng": torch.get_rng_state(), "queue": queue, "step": step, "tokens": tokens,
                  "elapsed_s": time.time() - t0, "cpu_s": time.process_time() - cpu0}
            torch.save(st, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)

    save(model, cfg, args, t0, args.out)
    print(f"done in {time.time() - t0:.0f} s -> {args.out}/{args.name}.gguf")


def save(model, cfg, args, t0, out):
    """model.pt, config.json and the GGUF (with the training settings in its kvlens.* metadata)."""
    os.makedirs(out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    meta = {"train_seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr,
            "train_seconds": round(time.time() - t0), "config": json.dumps(config_dict(cfg)),
            "torch": torch.__version__}
    if args.init_gguf:  # v1's GGUFs keep exactly the keys they had
        meta.update({"init_gguf": os.path.basename(args.init_gguf), "threads": args.threads,
                     "train_cpu_seconds": round(time.process_time() - args.cpu0), "bf16": args.bf16})
    name = "kvlens arith reasoner" + ("" if args.name == "arith-reasoner" else " " + args.name.split("-")[-1])
    template = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen3-chat-template.jinja")).read()
    export_gguf(model, os.path.join(out, f"{args.name}.gguf"), template, meta, name=name)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({**config_dict(cfg), **meta}, f, indent=1)


if __name__ == "__main__":
    main()
