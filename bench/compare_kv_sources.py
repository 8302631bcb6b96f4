"""Two eval coe runs of the same command (e.g. a committed graph-source run and its cache-source rerun): are the
answers token-identical, how far do the KV scores and the test-part AUROCs move?

  python3 bench/compare_kv_sources.py docs/results/coe-smollm2-arith runs/coe-smollm2-arith-cache
"""
import json, sys
a_dir, b_dir = sys.argv[1], sys.argv[2]
def rows(d): return {json.loads(l)["index"]: json.loads(l) for l in open(f"{d}/samples.jsonl")}
A, B = rows(a_dir), rows(b_dir)
same = sum(A[i]["output_tokens"] == B[i]["output_tokens"] for i in A)
print(f"answers: {len(A)}, token-identical: {same}")
for k in ("kv_coe_r", "kv_coe_c", "kv_layer_coe_r", "kv_layer_coe_c", "hs_coe_c", "max_prob"):
    d = max(abs(A[i]["scores"][k] - B[i]["scores"][k]) for i in A if A[i]["output_tokens"] == B[i]["output_tokens"])
    print(f"{k}: max |graph - cache| over identical answers {d:.2e}")
sa, sb = json.load(open(f"{a_dir}/summary.json"))["scores"], json.load(open(f"{b_dir}/summary.json"))["scores"]
for k in ("kv_coe_r", "kv_coe_c", "kv_layer_coe_r", "kv_layer_coe_c", "hs_coe_c", "max_prob", "combined"):
    if k in sa and k in sb:
        print(f"test AUROC {k}: graph {sa[k]['auroc']:.4f} cache {sb[k]['auroc']:.4f} diff {sb[k]['auroc'] - sa[k]['auroc']:+.4f}")
