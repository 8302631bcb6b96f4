#!/usr/bin/env bash
# --kv-source: the same generation's pooled KV features read from the graph (F32) and from the KV cache (F16
# as stored) agree to F16 rounding, differ somewhere (the flag is wired), and a bad value is refused.
# Usage: kv_source_test.sh KVLENS MODEL
set -u
KVLENS=$1
MODEL=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
for src in graph cache; do
    for fa in on off; do
        "$KVLENS" generate -m "$MODEL" -p "The KV cache as a representation" -n 8 -t 2 --raw --flash-attn $fa \
            --kv-source $src --features "$T/$src-$fa.jsonl" --layer-agg flatten > /dev/null 2> "$T/err" \
            || { cat "$T/err"; fail "generate --kv-source $src --flash-attn $fa"; }
    done
done
python3 - "$T" <<'PY' || fail "features differ"
import json, sys
import numpy as np
for fa in ("on", "off"):
    g, c = (json.loads(open(f"{sys.argv[1]}/{s}-{fa}.jsonl").readline()) for s in ("graph", "cache"))
    assert g["text"] == c["text"] and g["n_vectors"] == c["n_vectors"]
    a, b = np.array(g["vectors"]), np.array(c["vectors"])
    assert a.shape == b.shape and a.size > 0
    # means over positions of F16-rounded rows (each element within 2^-11 relative): the error of a mean is
    # bounded by the scale of the rows, not of the (possibly cancelling) mean
    scale = np.max(np.abs(a), axis=-1, keepdims=True)
    assert np.all(np.abs(a - b) <= 1e-3 * scale + 1e-6), np.max(np.abs(a - b) / scale)
    assert np.any(a != b), "identical: is --kv-source wired?"
PY
"$KVLENS" generate -m "$MODEL" -p "x" --kv-source disk 2> "$T/err"
[ $? != 0 ] && grep -q "kv-source" "$T/err" || { cat "$T/err"; fail "a bad --kv-source is not refused"; }
echo ok
