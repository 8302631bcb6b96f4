"""kvlens metrics (src/eval/metrics.cpp) against scikit-learn.

The test-only tool metrics-ref (tools/metrics_ref) prints the C++ metrics as JSON lines; ctest passes its path
in KVLENS_METRICS_REF. Random cases have many ties (scores rounded to 1 or 2 decimals), imbalanced labels and
n from 5 to 2000; every number must agree with sklearn within 1e-12. The bootstrap interval is checked
against a pure-Python resampling driven by a Python port of std::mt19937_64.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pytest

TOL = 1e-12


@pytest.fixture(scope="module")
def metrics_ref() -> str:
    exe = os.environ.get("KVLENS_METRICS_REF", "")
    if not exe:
        pytest.skip("KVLENS_METRICS_REF is not set (ctest sets it to the metrics-ref tool)")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(f"KVLENS_METRICS_REF={exe} is not an executable file (build the metrics-ref target)")
    return exe


@pytest.fixture(scope="module")
def skm(metrics_ref):
    """sklearn.metrics. Imported here, after the KVLENS_METRICS_REF check, so that collecting this file (as
    python_kv_reference does for the whole folder) needs no scikit-learn; when the check runs, a missing
    scikit-learn is a failure, not a skip."""
    try:
        from sklearn import metrics
    except ImportError as e:
        pytest.fail(f"scikit-learn is required: pip install -r tests/python/requirements.txt ({e})")
    return metrics


def run_ref(exe: str, cases: list[dict]) -> list[dict]:
    stdin = "".join(json.dumps(c) + "\n" for c in cases)
    r = subprocess.run([exe], input=stdin, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == len(cases)
    return out


def random_cases(seed: int = 20240917) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for n in (5, 6, 9, 20, 57, 100, 333, 1000, 2000):
        for pos_rate in (0.03, 0.2, 0.5, 0.8, 0.97):
            for decimals in (1, 2, None):
                y = (rng.random(n) < pos_rate).astype(int)
                y[0], y[1] = 1, 0  # both classes
                rng.shuffle(y)
                s = rng.random(n) + 0.3 * y  # informative but overlapping
                if decimals is not None:
                    s = np.round(s, decimals)
                cases.append({"scores": s.tolist(), "labels": y.tolist()})
    return cases


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL


def test_metrics_match_sklearn(metrics_ref, skm):
    cases = random_cases()
    outs = run_ref(metrics_ref, cases)
    for case, out in zip(cases, outs):
        s = np.array(case["scores"])
        y = np.array(case["labels"])
        where = f"n={len(y)} positives={int(y.sum())} distinct={len(np.unique(s))}"
        assert "error" not in out, out["error"]
        assert out["n"] == len(y) and out["n_correct"] == int(y.sum()), where
        assert close(out["accuracy"], y.mean()), where
        assert close(out["auroc"], skm.roc_auc_score(y, s)), where
        assert close(out["aupr"], skm.average_precision_score(y, s)), where

        fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
        roc = out["roc"]
        assert len(roc["fpr"]) == len(fpr) == len(np.unique(s)) + 1, where
        assert np.max(np.abs(np.array(roc["fpr"]) - fpr)) <= TOL, where
        assert np.max(np.abs(np.array(roc["tpr"]) - tpr)) <= TOL, where
        assert roc["thresholds"][0] is None and math.isinf(thr[0]), where  # +inf prints as null
        assert np.array_equal(np.array(roc["thresholds"][1:]), thr[1:]), where
        assert close(out["fpr95"], fpr[tpr >= 0.95].min()), where


def test_ties_are_common_in_the_random_cases():
    # Guard on the test data itself: the point is to exercise tied scores across classes.
    tied = 0
    for c in random_cases():
        s = np.array(c["scores"])
        y = np.array(c["labels"])
        tied += len(np.intersect1d(s[y == 1], s[y == 0])) > 0
    assert tied >= 60  # 63 of the 135 cases with this seed (the continuous third has none)


def test_degenerate_inputs_are_null(metrics_ref):
    cases = [{"scores": [], "labels": []}, {"scores": [0.1, 0.2], "labels": [1, 1]},
             {"scores": [0.1, 0.2, 0.2], "labels": [0, 0, 0]}]
    for case, out in zip(cases, run_ref(metrics_ref, cases)):
        assert out["auroc"] is None and out["aupr"] is None and out["fpr95"] is None
        assert out["roc"]["fpr"] == []
    bad = [{"scores": [0.1, 0.2], "labels": [1]}, {"scores": [0.1], "labels": [2]}]
    for out in run_ref(metrics_ref, bad):
        assert "error" in out


class MT19937_64:
    """std::mt19937_64, so that the bootstrap resamples can be replayed here."""

    MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self.mt = [seed & self.MASK]
        for i in range(1, 312):
            prev = self.mt[-1]
            self.mt.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & self.MASK)
        self.i = 312

    def _twist(self):
        mt = self.mt
        for k in range(312):
            x = (mt[k] & 0xFFFFFFFF80000000) | (mt[(k + 1) % 312] & 0x7FFFFFFF)
            xa = x >> 1
            if x & 1:
                xa ^= 0xB5026F5AA96619E9
            mt[k] = mt[(k + 156) % 312] ^ xa
        self.i = 0

    def __call__(self) -> int:
        if self.i >= 312:
            self._twist()
        x = self.mt[self.i]
        self.i += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & self.MASK


def test_mt19937_64_port():
    g = MT19937_64(5489)
    for _ in range(9999):
        g()
    assert g() == 9981545732273789042  # the C++ standard's required 10000th value


def test_bootstrap_matches_resampling_with_sklearn(metrics_ref, skm):
    rng = np.random.default_rng(5)
    cases = []
    for n, rate in ((12, 0.25), (80, 0.1), (300, 0.6)):
        y = (rng.random(n) < rate).astype(int)
        y[0], y[1] = 1, 0
        s = np.round(rng.normal(size=n) + y, 1)
        cases.append({"scores": s.tolist(), "labels": y.tolist(), "bootstrap": {"resamples": 200, "seed": 17}})
    for case, out in zip(cases, run_ref(metrics_ref, cases)):
        s = np.array(case["scores"])
        y = np.array(case["labels"])
        g = MT19937_64(17)
        kept, skipped = [], 0
        for _ in range(200):
            idx = np.array([g() % len(y) for _ in range(len(y))])
            if y[idx].min() == y[idx].max():
                skipped += 1
                continue
            kept.append(skm.roc_auc_score(y[idx], s[idx]))
        b = out["bootstrap"]
        assert b["resamples"] == 200 and b["skipped"] == skipped
        assert close(b["lo"], np.percentile(kept, 2.5)) and close(b["hi"], np.percentile(kept, 97.5))
