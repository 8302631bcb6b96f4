"""kvlens's KVClassifier MLP (src/methods/router.cpp) against the numpy reference in router_ref.py.

The gtest RouterRef.Dump (in the router_test binary; ctest passes its path in KVLENS_ROUTER_TEST_BIN) writes
init weights, three minibatches, the first minibatch's loss and gradient, the weights after each AdamW step,
and a trained router file with rows and the C++ predictions. Here the same arithmetic runs in float64 from
the same init; float32 vs float64 differences are far below the 1e-5 tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import router_ref as ref

TOL = 1e-5


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> tuple[dict, Path]:
    exe = os.environ.get("KVLENS_ROUTER_TEST_BIN", "")
    if not exe:
        pytest.skip("KVLENS_ROUTER_TEST_BIN is not set (ctest sets it to <build>/tests/router_test)")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(f"KVLENS_ROUTER_TEST_BIN={exe} is not an executable file (build router_test first)")
    out = tmp_path_factory.mktemp("router")
    env = dict(os.environ, KVLENS_ROUTER_REF_OUT=str(out))
    r = subprocess.run([exe, "--gtest_filter=RouterRef.Dump"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out / "router_ref.json", encoding="utf-8") as f:
        return json.load(f), out


def batches(d: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    F = d["n_in"]
    return [(np.asarray(b["x"], dtype=np.float64).reshape(-1, F), np.asarray(b["y"], dtype=np.float64))
            for b in d["batches"]]


def assert_close(got: dict, want: dict, what: str) -> None:
    for k in ("w1", "b1", "w2", "b2"):
        g, w = np.asarray(got[k], dtype=np.float64), np.asarray(want[k], dtype=np.float64)
        assert g.shape == w.shape, (what, k, g.shape, w.shape)
        err = float(np.max(np.abs(g - w)))
        assert err < TOL, f"{what} {k}: max abs difference {err:.3g}"


def test_no_pre_activation_on_the_kink(dump):
    # A pre-activation within float32 rounding of 0 could take the other ReLU branch in C++; the dump's seed
    # keeps them clear, so the comparisons below are meaningful.
    d, _ = dump
    w = ref.weights(d["init"])
    opt = ref.Adam(lr=d["lr"], beta1=d["beta1"], beta2=d["beta2"], eps=d["eps"], weight_decay=d["weight_decay"])
    for x, y in batches(d):
        assert np.min(np.abs(ref.pre_activations(w, x))) > 1e-4
        _, g = ref.loss_grad(w, x, y)
        w = opt.step(w, g)


def test_loss_and_gradient(dump):
    d, _ = dump
    x, y = batches(d)[0]
    loss, grad = ref.loss_grad(ref.weights(d["init"]), x, y)
    assert abs(loss - d["loss0"]) < TOL * max(1.0, abs(loss))
    assert_close(d["grad0"], grad, "gradient")
    # The check can fail: another target gives another gradient.
    _, other = ref.loss_grad(ref.weights(d["init"]), x, y + 0.1)
    assert np.max(np.abs(other["b2"] - np.float64(d["grad0"]["b2"]))) > 1e-3


def test_adamw_steps(dump):
    d, _ = dump
    w = ref.weights(d["init"])
    opt = ref.Adam(lr=d["lr"], beta1=d["beta1"], beta2=d["beta2"], eps=d["eps"], weight_decay=d["weight_decay"])
    for i, (x, y) in enumerate(batches(d)):
        _, g = ref.loss_grad(w, x, y)
        w = opt.step(w, g)
        assert_close(d["after"][i], w, f"weights after step {i + 1}")
    # Without the decoupled weight decay the weights after the steps differ measurably.
    w2 = ref.weights(d["init"])
    plain = ref.Adam(lr=d["lr"], beta1=d["beta1"], beta2=d["beta2"], eps=d["eps"], weight_decay=0.0)
    for x, y in batches(d):
        _, g = ref.loss_grad(w2, x, y)
        w2 = plain.step(w2, g)
    assert np.max(np.abs(w2["w1"] - np.asarray(d["after"][-1]["w1"]))) > 10 * TOL


def test_router_file_predictions(dump):
    d, out = dump
    router = ref.load_router(str(out / d["router_file"]))
    F = router["n_features"]
    assert router["w1"].shape == (router["b1"].shape[0], F)
    assert F == 2 * router["model"]["n_head_kv"] * router["model"]["head_dim"]
    pool = router["features"]["pooling"]
    assert (pool["kv_part"], pool["pos_agg"], pool["head_agg"], pool["layer_agg"]) == ("kv_cat", "sum", "flatten",
                                                                                      "mean")
    x = np.asarray(d["rows"], dtype=np.float64).reshape(-1, F)
    want = ref.predict(router, x)
    got = np.asarray(d["predictions"], dtype=np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert float(np.max(err)) < TOL, float(np.max(err))
    assert float(np.std(want)) > 1.0  # a trained router, not a constant
