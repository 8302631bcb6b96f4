"""kvlens calibrate --method logistic (src/methods/calibration.cpp) against scikit-learn.

End to end through the CLI: a synthetic samples.jsonl (eval coe's line format) goes through `kvlens calibrate`,
and the probabilities the written file gives (p = sigmoid(w . (x - mean) / std + bias), recomputed here from
its fields) must agree within 1e-6 with scikit-learn's LogisticRegression on the same standardised features
(population std, constant features left out) with C = 1 / ridge: both minimise
sum(log-loss) + ridge / 2 |w|^2 with an unpenalised intercept. Cases: several sizes and ridges, features on
very different scales, a constant feature, and separable data. `--part dev` is checked against a Python port
of src/eval/split.h (FNV-1a of the id). ctest passes the kvlens binary in KVLENS_BIN.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

TOL = 1e-6


@pytest.fixture(scope="module")
def kvlens() -> str:
    exe = os.environ.get("KVLENS_BIN", "")
    if not exe:
        pytest.skip("KVLENS_BIN is not set (ctest sets it to the kvlens binary)")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(f"KVLENS_BIN={exe} is not an executable file (build the kvlens target)")
    return exe


@pytest.fixture(scope="module")
def sk(kvlens):
    """sklearn, imported after the binary check: when the check runs, a missing scikit-learn is a failure."""
    try:
        import sklearn.linear_model
        import sklearn.metrics
    except ImportError as e:
        pytest.fail(f"scikit-learn is required: pip install -r tests/python/requirements.txt ({e})")
    return sklearn


def write_run(path, ids, X, y, names):
    with open(path, "w") as f:
        for i, (qid, row, label) in enumerate(zip(ids, X, y)):
            scores = {n: float(v) for n, v in zip(names, row)}
            scores["hs_coe_c"] = 0.5  # a score that is not a feature: ignored
            f.write(json.dumps({"index": i, "id": qid, "correct": bool(label), "scores": scores}) + "\n")


def calibrate(exe, tmp_path, run, names, *extra):
    out = tmp_path / "cal.json"
    r = subprocess.run([exe, "calibrate", "--from", str(run), "--method", "logistic", "--features",
                        ",".join(names), "-o", str(out), *extra], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text()), r.stdout


def file_probs(cal, X):
    mean, std, w = (np.array(cal[k], dtype=float) for k in ("mean", "std", "weights"))
    z = np.where(std > 0, (X - mean) / np.where(std > 0, std, 1), 0.0)
    return 1 / (1 + np.exp(-(z @ w + cal["bias"])))


def cases():
    rng = np.random.default_rng(20250101)
    out = []
    for n, d, ridge in ((40, 2, 1.0), (200, 5, 1.0), (1000, 8, 0.1), (500, 3, 10.0), (300, 6, 1e-3)):
        scale = 10.0 ** rng.uniform(-3, 3, d)  # lengths in the hundreds next to probabilities near 1
        X = rng.normal(size=(n, d)) * scale + rng.normal(size=d) * scale
        beta = rng.normal(size=d) / scale
        y = (rng.random(n) < 1 / (1 + np.exp(-(X - X.mean(0)) @ beta))).astype(int)
        y[0], y[1] = 1, 0
        out.append((f"n{n}-d{d}-ridge{ridge:g}", X, y, ridge))
    X = rng.normal(size=(150, 4))
    X[:, 2] = 3.25  # constant: weight 0, no part in the fit
    y = (rng.random(150) < 1 / (1 + np.exp(-X[:, 0]))).astype(int)
    out.append(("constant-feature", X, y, 1.0))
    X = rng.normal(size=(80, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)  # separable: the ridge keeps the weights finite
    out.append(("separable", X, y, 1.0))
    out.append(("separable-small-ridge", X, y, 0.01))
    return out


@pytest.mark.parametrize("name,X,y,ridge", cases(), ids=[c[0] for c in cases()])
def test_logistic_matches_sklearn(kvlens, sk, tmp_path, name, X, y, ridge):
    names = [f"f{j}" for j in range(X.shape[1])]
    run = tmp_path / "samples.jsonl"
    write_run(run, [f"q{i}" for i in range(len(y))], X, y, names)
    cal, stdout = calibrate(kvlens, tmp_path, run, names, "--part", "all", "--ridge", repr(ridge))
    assert cal["version"] == 2 and cal["method"] == "logistic" and cal["score"] == "combined"
    assert cal["features"] == names and cal["n"] == len(y) and cal["part"] == "all"

    mean, std = X.mean(0), X.std(0)  # population std, as StandardScaler
    np.testing.assert_allclose(cal["mean"], mean, rtol=1e-12, atol=1e-12 * np.abs(X).max())
    np.testing.assert_allclose(cal["std"], std, rtol=1e-10, atol=0)
    used = std > 0
    Z = (X[:, used] - mean[used]) / std[used]
    lr = sk.linear_model.LogisticRegression(C=1 / ridge, tol=1e-12, solver="newton-cholesky", max_iter=1000)
    lr.fit(Z, y)
    want = lr.predict_proba(Z)[:, 1]
    got = file_probs(cal, X)
    assert np.abs(got - want).max() < TOL, (name, np.abs(got - want).max())
    w = np.zeros(X.shape[1])
    w[used] = lr.coef_[0]
    np.testing.assert_allclose(cal["weights"], w, atol=TOL * max(1.0, np.abs(w).max()))
    assert abs(cal["bias"] - lr.intercept_[0]) < TOL * max(1.0, abs(lr.intercept_[0]))
    assert abs(cal["train_auroc"] - sk.metrics.roc_auc_score(y, lr.decision_function(Z))) < 1e-9
    for j in np.flatnonzero(~used):
        assert cal["weights"][j] == 0 and cal["std"][j] == 0
        assert "dropped" in stdout
    assert f"training AUROC {cal['train_auroc']:.3f}" in stdout


def fnv1a64(s: str) -> int:
    h = 14695981039346656037
    for b in s.encode():
        h = ((h ^ b) * 1099511628211) % (1 << 64)
    return h


def test_dev_part_is_the_split_by_id(kvlens, sk, tmp_path):
    rng = np.random.default_rng(7)
    n = 400
    ids = [f"gsm8k-{i * 37 % 1009}" for i in range(n)]
    X = rng.normal(size=(n, 2))
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * X[:, 0]))).astype(int)
    names = ["kv_coe_r", "neg_length"]
    run = tmp_path / "samples.jsonl"
    write_run(run, ids, X, y, names)
    dev = np.array([fnv1a64(i) % 10000 < 3000 for i in ids])
    assert 0 < dev.sum() < n
    for part, rows in ((None, dev), ("dev", dev), ("test", ~dev)):
        cal, _ = calibrate(kvlens, tmp_path, run, names, *(["--part", part] if part else []))
        assert cal["part"] == (part or "dev")  # logistic trains on the development part by default
        assert cal["n"] == rows.sum() and cal["n_correct"] == y[rows].sum()
        np.testing.assert_allclose(cal["mean"], X[rows].mean(0), rtol=1e-12, atol=1e-15)
