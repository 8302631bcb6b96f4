"""The token-axis KV-CoE (the paper's kv_coe_*) against a numpy recomputation from `kvlens dump` rows.

For each knob setting, `kvlens generate --scores` answers a fixed question greedily and writes its scores and
tokens; `kvlens dump --tokens` then runs the prompt and the answer (less its last token, which is never fed
back) and writes every layer's K and V rows. numpy builds the chain from those rows as method.md section 2
states it (e_t = mean over the selected layers of [K_l[t] ; V_l[t]], heads flattened or averaged, over the
producer positions or the generated tokens only) and computes CoE-Mag/Ang/R/C independently of the C++ code.

dump replays the generation's batches (`--decode-from`: the prompt as one batch, then one token per batch), so
its rows are the ones generate computed and the tolerance is float rounding: 1e-6 relative.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import report

QUESTION = "Tom has 3 boxes with 7 apples each. He eats 2 apples. How many apples are left?"
N_TOKENS = 40
RTOL = 1e-6
SNAP = 1e-6



def knobs(layer_sets):
    """Every kv_part x positions x head_agg on all layers, and both position sets on other layer sets."""
    k = [("all", part, pos, head) for part in ["kv_cat", "k", "v"] for pos in ["producer", "generated"]
         for head in ["flatten", "mean"]]
    return k + [(layers, "kv_cat", pos, "flatten") for layers in layer_sets for pos in ["producer", "generated"]]


def parse_layers(text: str, n_layer: int):
    if text == "all":
        return list(range(n_layer))
    out = []
    for item in text.split(","):
        if ".." in item:
            a, b = (int(x) for x in item.split(".."))
            out += list(range(a, b + 1))
        else:
            out.append(int(item))
    return [l + n_layer if l < 0 else l for l in out]


def angle(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    t = float(np.arccos(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0)))
    return 0.0 if t < SNAP else (float(np.pi) if t > np.pi - SNAP else t)


def coe(h: np.ndarray) -> dict:
    n = h.shape[0] - 1
    assert n >= 1
    d_norm = float(np.linalg.norm(h[-1] - h[0])) or 1.0
    a_norm = angle(h[-1], h[0]) or 1.0
    m = np.array([np.linalg.norm(h[i + 1] - h[i]) / d_norm for i in range(n)])
    a = np.array([angle(h[i + 1], h[i]) / a_norm for i in range(n)])
    c = float(np.hypot(np.mean(m * np.cos(a)), np.mean(m * np.sin(a))))
    return {"mag": float(m.mean()), "ang": float(a.mean()), "r": float(m.mean() - a.mean()), "c": c}


def token_chain(z: dict, layers, part: str, head: str, n_head_kv: int, positions) -> np.ndarray:
    k = z["k"].astype(np.float64)  # [n_layer, n_tokens, kv_width]
    v = z["v"].astype(np.float64)
    sel = {"kv_cat": [k, v], "k": [k], "v": [v]}[part]
    rows = []
    for x in sel:
        x = x[layers][:, positions, :]  # [|S|, T, kv_width]
        if head == "mean":
            x = x.reshape(x.shape[0], x.shape[1], n_head_kv, -1).mean(axis=2)
        rows.append(x.mean(axis=0))
    return np.concatenate(rows, axis=1)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed with exit {r.returncode}:\n{r.stderr[-3000:]}")
    return r


# On the real model: kvlens' default, method.md's reading of the paper, each with both position sets, and V
# with a layer list (every knob value is covered on the tiny model; each setting here is one generate run).
SMOLLM2_SETTINGS = [(layers, part, pos, head)
                    for layers, part, head in [("-4..-1", "k", "mean"), ("all", "kv_cat", "flatten")]
                    for pos in ["producer", "generated"]] + [("0,2,-1", "v", "producer", "flatten")]


def check_model(kvlens_bin: str, model: str, tmp_path: Path, settings):
    worst = 0.0
    dumped = None
    for i, (layers, part, pos, head) in enumerate(settings):
        out = tmp_path / f"scores{i}.jsonl"
        run([kvlens_bin, "generate", "-m", model, "-p", QUESTION, "-n", str(N_TOKENS), "--scores", str(out),
             "--coe-layers", layers, "--coe-kv-part", part, "--coe-positions", pos, "--coe-head-agg", head])
        rec = json.loads(out.read_text().splitlines()[0])
        prompt, output = rec["prompt_tokens"], rec["output_tokens"]
        assert len(output) >= 8, f"the answer is too short for this check: {rec['text']!r}"
        if dumped is None or dumped[0] != (prompt, output):
            npz = tmp_path / "dump.npz"
            toks = prompt + output[:-1]
            run([kvlens_bin, "dump", "-m", model, "--tokens", ",".join(map(str, toks)),
                 "--decode-from", str(len(prompt)), "-o", str(npz)])
            with np.load(npz) as z:
                dumped = ((prompt, output), {k: z[k] for k in z.files})
        z = dumped[1]
        n_layer = z["k"].shape[0]
        first = len(prompt) - 1 if pos == "producer" else len(prompt)
        positions = list(range(first, len(prompt) + len(output) - 1))
        sel = parse_layers(layers, n_layer)
        assert rec["token_coe"]["layers"] == sel
        assert rec["token_coe"]["n_states"] == len(positions)
        want = coe(token_chain(z, sel, part, head, int(z["n_head_kv"]), positions))
        for key in ("mag", "ang", "r", "c"):
            got = rec["scores"][f"kv_coe_{key}"]
            err = abs(got - want[key]) / max(abs(want[key]), 1e-3)
            worst = max(worst, err)
            assert err <= RTOL, f"{layers} {part} {pos} {head}: kv_coe_{key} {got} vs numpy {want[key]}"
    report(f"token-axis KV-CoE vs numpy from dump rows, {Path(model).name}: {len(settings)} knob settings, "
           f"worst relative error {worst:.2e}")


def test_token_coe_tiny_qwen2(kvlens_bin, test_models_dir, tmp_path):
    check_model(kvlens_bin, str(test_models_dir / "tiny-qwen2.gguf"), tmp_path, knobs(["-1", "0,-1"]))


def test_token_coe_smollm2(kvlens_bin, smollm2_path, tmp_path):
    check_model(kvlens_bin, smollm2_path, tmp_path, SMOLLM2_SETTINGS)
