#!/usr/bin/env python3
"""The CoE reference pipeline (not part of kvlens): the Chain-of-Embedding authors' way of scoring an answer,
on the same GGUF, for bench/compare_coe_reference.py. Runs in the venv of bench/requirements.txt.

Loads the GGUF with Hugging Face transformers (its GGUF loader dequantises every tensor to F32; CPU torch),
and for each question of a `kvlens eval coe` samples.jsonl: feeds the same prompt token ids kvlens used
(`prompt_tokens`: same chat template, same text), generates greedily with output_hidden_states and
output_scores (and output_attentions, as the authors' inference.py does), then computes CoE as their
score.py / inference.py do:
  per layer j (embeddings + every layer output: L+1 states), the mean over pos in [0, output_len) of
  hidden_states[pos][j][0][0]; Mag = mean ||h_{i+1} - h_i|| / ||h_L - h_0||; Ang = mean acos(cos(h_{i+1}, h_i))
  / acos(cos(h_L, h_0)) (cos clipped at 1 only); R = Mag - Ang; C = |mean of Mag_i * (cos Ang_i, sin Ang_i)|,
  in NumPy float32, as theirs.
Quirks of the reference reproduced on purpose (they are what "the CoE code" computes; kvlens differs):
  1. At pos 0 (the prefill step) hidden_states[0][j] holds every prompt position and [0][0] picks the FIRST
     prompt token (a chat template's <|im_start|>), not the last one; kvlens' "producer" positions use the
     last prompt position (the one that produces the first answer token). Positions 1.. are the generated
     tokens fed back, the last one never (both agree there).
  2. The last state is HF's final hidden state, after the model's final norm; kvlens' last state is the
     residual stream before it (llama.cpp's l_out of the last layer).
  3. float32 throughout, no angle snapping, cos clipped at +1 but not at -1, no guard for parallel or equal
     endpoints (a zero denominator gives inf/nan; such rows are reported, not fixed).
  4. output_attentions=True (the authors keep attention maps): eager attention, more time and memory.
  5. F32 dequantised weights and PyTorch kernels vs llama.cpp's quantised matmuls (Q8 activations): greedy
     answers can diverge after some tokens; the comparison reports how many are token-identical.
Beside the reference's scores, the same run computes them with quirks 1 and 2 removed ("aligned": the last
prompt position at the prefill step, and the last layer's output before the final norm, taken with a forward
hook on the last decoder layer), i.e. kvlens' definition on the reference's own hidden states: where kvlens
and the reference generate the same tokens, the two differ only in numerics (quantised vs F32 weights).
Writes one JSON line per question: id, seconds (generate + scoring, model load excluded), tokens, the four
scores (and the aligned ones), whether the answer's tokens equal kvlens'. Peak RSS is measured by the caller (wait4).

  .venv-bench/bin/python bench/coe_reference.py --model M.gguf --samples OUT/samples.jsonl --out ref.jsonl -t 2
"""
import argparse
import json
import math
import os
import sys
import time


def coe_scores(hs_all_layer):
    """score.py's CoEScoreInfo, R and C (with Mag and Ang), on a list of float32 vectors."""
    import numpy as np
    n = len(hs_all_layer)
    den = np.linalg.norm(hs_all_layer[-1] - hs_all_layer[0], ord=2)
    mag_i = [np.linalg.norm(hs_all_layer[i + 1] - hs_all_layer[i], ord=2) / den for i in range(n - 1)]
    end = np.dot(hs_all_layer[-1], hs_all_layer[0]) / (np.linalg.norm(hs_all_layer[-1], ord=2) *
                                                       np.linalg.norm(hs_all_layer[0], ord=2))
    end = math.acos(end)
    ang_i = []
    for i in range(n - 1):
        a, b = hs_all_layer[i + 1], hs_all_layer[i]
        sim = np.dot(a, b) / (np.linalg.norm(a, ord=2) * np.linalg.norm(b, ord=2))
        sim = sim if sim <= 1 else 1
        ang_i.append(math.acos(sim) / end)
    mag, ang = float(np.mean(mag_i)), float(np.mean(ang_i))
    x = np.mean([mag_i[i] * math.cos(ang_i[i]) for i in range(n - 1)])
    y = np.mean([mag_i[i] * math.sin(ang_i[i]) for i in range(n - 1)])
    return {"mag": mag, "ang": ang, "r": mag - ang, "c": float(math.sqrt(x ** 2 + y ** 2))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--samples", required=True, help="kvlens eval coe samples.jsonl (prompt_tokens, max tokens)")
    ap.add_argument("--max-tokens", type=int, required=True, help="max_new_tokens (the dataset config's)")
    ap.add_argument("--out", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t0 = time.monotonic()
    d, f = os.path.split(os.path.abspath(args.model))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    # The last decoder layer's output before the final norm, per forward call (for the aligned scores).
    last_out = []

    def keep_last(module, inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        last_out.append(h[0].detach().float().cpu().numpy())

    model.model.layers[-1].register_forward_hook(keep_last)
    load_s = time.monotonic() - t0
    eos = model.generation_config.eos_token_id
    rows = [json.loads(l) for l in open(args.samples)]
    rows.sort(key=lambda r: r["index"])
    if args.limit:
        rows = rows[:args.limit]
    with open(args.out, "w") as out:
        out.write(json.dumps({"load_s": load_s, "torch": torch.__version__,
                              "transformers": __import__("transformers").__version__,
                              "threads": args.threads}) + "\n")
        for r in rows:
            ids = torch.tensor([r["prompt_tokens"]], dtype=torch.long)
            t1 = time.monotonic()
            last_out.clear()
            with torch.no_grad():
                g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=args.max_tokens, return_dict_in_generate=True,
                                   output_hidden_states=True, output_scores=True, output_attentions=True,
                                   pad_token_id=eos if isinstance(eos, int) else eos[0], eos_token_id=eos)
            hs = g.hidden_states
            output_len = min(args.max_tokens, len(g.scores))
            n_layer = len(hs[1])
            hs_all_layer = []
            for j in range(n_layer):
                all_pos = np.array([np.array(hs[pos][j][0][0].float().cpu()) for pos in range(0, output_len)])
                hs_all_layer.append(np.mean(all_pos, axis=0))
            with np.errstate(all="ignore"):
                try:
                    s = coe_scores(hs_all_layer)
                except (ValueError, ZeroDivisionError) as e:  # quirk 3: acos domain / zero denominators
                    s = {"mag": float("nan"), "ang": float("nan"), "r": float("nan"), "c": float("nan"),
                         "error": repr(e)}
            secs = time.monotonic() - t1
            # Aligned (not timed): the last prompt position at the prefill step; the pre-norm last state.
            aligned = []
            for j in range(n_layer):
                rows_j = []
                for pos in range(0, output_len):
                    if j == n_layer - 1:
                        h = last_out[pos][-1]
                    else:
                        h = np.array(hs[pos][j][0][-1].float().cpu())
                    rows_j.append(h)
                aligned.append(np.mean(np.array(rows_j, dtype=np.float32), axis=0))
            with np.errstate(all="ignore"):
                try:
                    s_aligned = coe_scores(aligned)
                except (ValueError, ZeroDivisionError) as e:
                    s_aligned = {"r": float("nan"), "c": float("nan"), "error": repr(e)}
            out_tokens = g.sequences[0][ids.shape[1]:].tolist()
            out.write(json.dumps({"id": r["id"], "index": r["index"], "seconds": secs, "n_tokens": len(out_tokens),
                                  "same_tokens_as_kvlens": out_tokens == r.get("output_tokens"),
                                  "scores": s, "scores_aligned": s_aligned}) + "\n")
            out.flush()
            print(f"{r['index']}: {secs:.2f} s, {len(out_tokens)} tokens, C {s['c']:.4f}", file=sys.stderr,
                  flush=True)


if __name__ == "__main__":
    main()
