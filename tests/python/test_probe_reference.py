"""kvlens's logistic probe and macro-F1 (src/eval/probe.cpp) against scikit-learn.

The test-only tool probe-ref (tools/probe_ref) fits the C++ probe on JSON input; ctest passes its path in
KVLENS_PROBE_REF. The same objective in sklearn: LogisticRegression(C, lbfgs, L2) on features standardised
with StandardScaler fitted on the training rows (or raw features). Both solvers are run to a tight tolerance,
so the predicted probabilities must agree within 1e-4 and the predictions exactly (up to near-ties).
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest


@pytest.fixture(scope="module")
def probe_ref() -> str:
    exe = os.environ.get("KVLENS_PROBE_REF", "")
    if not exe:
        pytest.skip("KVLENS_PROBE_REF is not set (ctest sets it to the probe-ref tool)")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(f"KVLENS_PROBE_REF={exe} is not an executable file (build the probe-ref target)")
    return exe


@pytest.fixture(scope="module")
def sk(probe_ref):
    try:
        import sklearn  # noqa: F401
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import f1_score
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:
        pytest.fail(f"scikit-learn is required: pip install -r tests/python/requirements.txt ({e})")
    return LogisticRegression, StandardScaler, f1_score


def run(exe: str, payload: dict) -> dict:
    r = subprocess.run([exe], input=json.dumps(payload), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def make_data(rng, n, d, k, spread):
    centres = rng.normal(size=(k, d))
    y = np.arange(n) % k
    rng.shuffle(y)
    x = centres[y] + spread * rng.normal(size=(n, d))
    x[:, 0] *= 10.0  # features on different scales, so standardising matters
    return x.astype(np.float32), y


CASES = [
    # n, d, classes, spread, C, standardize
    (80, 4, 2, 1.0, 1.0, True),
    (120, 10, 3, 1.5, 1.0, True),
    (200, 20, 5, 2.0, 0.1, True),
    (150, 16, 7, 1.0, 10.0, True),
    (100, 6, 3, 1.0, 1.0, False),
    (90, 8, 2, 2.0, 0.5, False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}_d{c[1]}_k{c[2]}_C{c[4]}_std{int(c[5])}" for c in CASES])
def test_probe_matches_sklearn(probe_ref, sk, case):
    LogisticRegression, StandardScaler, _ = sk
    n, d, k, spread, C, standardize = case
    rng = np.random.default_rng(n * 31 + d)
    x, y = make_data(rng, n, d, k, spread)
    xt, yt = make_data(np.random.default_rng(n * 31 + d), n // 2, d, k, spread)  # same centres, fresh points
    out = run(probe_ref, {"x_train": x.tolist(), "y_train": y.tolist(), "x_test": xt.tolist(), "n_classes": k,
                          "C": C, "standardize": standardize, "tol": 1e-10, "max_iter": 10000})
    assert out["converged"], out["iterations"]
    xs, xts = x.astype(np.float64), xt.astype(np.float64)
    if standardize:
        sc = StandardScaler().fit(xs)
        xs, xts = sc.transform(xs), sc.transform(xts)
    ref = LogisticRegression(C=C, solver="lbfgs", tol=1e-12, max_iter=100000).fit(xs, y)
    p_ref = ref.predict_proba(xts)
    p = np.array(out["proba"])
    assert p.shape == p_ref.shape
    assert np.max(np.abs(p - p_ref)) < 1e-4, np.max(np.abs(p - p_ref))
    # Predictions agree except where sklearn's own top two probabilities are within the tolerance.
    top2 = np.sort(p_ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    assert np.array_equal(np.array(out["pred"])[clear], p_ref.argmax(axis=1)[clear])
    # The check can fail: a different C gives clearly different probabilities.
    other = LogisticRegression(C=C * 100, solver="lbfgs", tol=1e-12, max_iter=100000).fit(xs, y)
    assert np.max(np.abs(p - other.predict_proba(xts))) > 1e-3


def test_macro_f1_matches_sklearn(probe_ref, sk):
    _, _, f1_score = sk
    rng = np.random.default_rng(0)
    for trial in range(200):
        k = int(rng.integers(2, 8))
        n = int(rng.integers(1, 60))
        t = rng.integers(0, k, size=n)
        p = rng.integers(0, k, size=n) if trial % 3 else np.where(rng.random(n) < 0.7, t, 0)
        out = run(probe_ref, {"f1_true": t.tolist(), "f1_pred": p.tolist()})
        ref = f1_score(t, p, average="macro", zero_division=0)
        assert abs(out["macro_f1"] - ref) < 1e-12, (t, p, out["macro_f1"], ref)
