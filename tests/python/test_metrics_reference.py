"""kvlens metrics (src/eval/metrics.cpp) against scikit-learn, and against independent numpy versions where
scikit-learn has none (PRR, AUROC within length bins, the length fit); the id split (src/eval/split.cpp)
against FNV-1a written here.

The test-only tool metrics-ref (tools/metrics_ref) prints the C++ metrics as JSON lines; ctest passes its path
in KVLENS_METRICS_REF. Random cases have many ties (scores rounded to 1 or 2 decimals), imbalanced labels and
n from 5 to 2000; every number must agree with the reference within 1e-12. The bootstrap interval is checked
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
        assert out["auroc"] is None and out["aupr"] is None and out["fpr95"] is None and out["prr"] is None
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


def test_paired_mean_difference_matches_resampling(metrics_ref):
    rng = np.random.default_rng(9)
    cases = []
    for n in (7, 50, 400):
        a = (rng.random(n) < 0.6).astype(int)
        b = np.where(rng.random(n) < 0.7, a, 1 - a)  # mostly the same outcomes, as two strategies' would be
        cases.append({"paired": {"a": a.tolist(), "b": b.tolist()}, "bootstrap": {"resamples": 300, "seed": 4}})
    for case, out in zip(cases, run_ref(metrics_ref, cases)):
        a = np.array(case["paired"]["a"])
        b = np.array(case["paired"]["b"])
        g = MT19937_64(4)
        diffs = []
        for _ in range(300):
            idx = np.array([g() % len(a) for _ in range(len(a))])
            diffs.append(np.mean(a[idx]) - np.mean(b[idx]))
        assert close(out["difference"], np.mean(a) - np.mean(b))
        bs = out["bootstrap"]
        assert bs["skipped"] == 0
        assert close(bs["lo"], np.percentile(diffs, 2.5)) and close(bs["hi"], np.percentile(diffs, 97.5))


# --- PRR ----------------------------------------------------------------------------------------------------


def prr_reference(s: np.ndarray, y: np.ndarray) -> float:
    """From the definition (LM-Polygraph's PredictionRejectionArea, uncertainty = -score): acc_k = accuracy of
    the k highest-scored, area = mean over k = 1..n; PRR = (area - accuracy) / (oracle area - accuracy).
    Ties: every member of a tied group counts as the group's mean label, which makes the cumulative count
    linear across the group (the mean over the group's orders)."""
    n = len(y)

    def area(order_key: np.ndarray) -> float:
        _, inverse = np.unique(order_key, return_inverse=True)
        group_mean = np.bincount(inverse, weights=y) / np.bincount(inverse)
        averaged = group_mean[inverse]
        desc = np.argsort(-order_key, kind="stable")
        return float(np.mean(np.cumsum(averaged[desc]) / np.arange(1, n + 1)))

    random = y.mean()
    oracle = area(y.astype(float))  # correct answers first; ties among them change nothing
    return (area(s) - random) / (oracle - random)


def test_prr_matches_numpy(metrics_ref):
    cases = random_cases()
    for case, out in zip(cases, run_ref(metrics_ref, cases)):
        s = np.array(case["scores"])
        y = np.array(case["labels"])
        where = f"n={len(y)} positives={int(y.sum())} distinct={len(np.unique(s))}"
        assert "error" not in out, out["error"]
        assert close(out["prr"], prr_reference(s, y)), where


def test_prr_without_ties_is_lm_polygraphs_formula(metrics_ref):
    # Distinct scores: PredictionRejectionArea's own steps (argsort of the uncertainty, cumsum / arange,
    # flipped, summed / n), the oracle as its area with the label as the estimator, random = accuracy.
    rng = np.random.default_rng(3)
    cases = []
    for n in (7, 50, 400):
        y = (rng.random(n) < 0.4).astype(int)
        y[0], y[1] = 1, 0
        cases.append({"scores": (rng.random(n) + 0.5 * y).tolist(), "labels": y.tolist()})

    def polygraph(estimator, target):
        sorted_metrics = np.asarray(target, float)[np.argsort(estimator, kind="stable")]
        return np.sum((np.cumsum(sorted_metrics) / np.arange(1, len(target) + 1))[::-1]) / len(target)

    for case, out in zip(cases, run_ref(metrics_ref, cases)):
        s = np.array(case["scores"])
        y = np.array(case["labels"])
        assert len(np.unique(s)) == len(s)
        ue, oracle, random = polygraph(-s, y), polygraph(-y, y), y.mean()
        assert close(out["prr"], (ue - random) / (oracle - random))


def test_prr_is_order_free_under_ties(metrics_ref):
    cases = [c for c in random_cases() if len(np.unique(c["scores"])) < len(c["scores"])][:20]
    rng = np.random.default_rng(8)
    shuffled = []
    for c in cases:
        p = rng.permutation(len(c["labels"]))
        s, y = np.array(c["scores"]), np.array(c["labels"])
        shuffled.append({"scores": s[p].tolist(), "labels": y[p].tolist()})
    for a, b in zip(run_ref(metrics_ref, cases), run_ref(metrics_ref, shuffled)):
        assert a["prr"] == b["prr"]


# --- Length as a confound -----------------------------------------------------------------------------------


def length_cases(seed: int = 99) -> list[dict]:
    """Correct answers shorter on average, the score partly driven by length; integer lengths with ties."""
    rng = np.random.default_rng(seed)
    cases = []
    for n in (8, 40, 300, 1500):
        for n_bins in (1, 2, 5, 10, 10000):
            for decimals in (1, None):
                y = (rng.random(n) < 0.45).astype(int)
                y[0], y[1] = 1, 0
                lengths = np.maximum(1, np.round(rng.lognormal(4.0 - 0.5 * y, 0.8))).astype(int)
                s = -0.3 * np.log(lengths) + rng.normal(size=n) + 0.4 * y
                if decimals is not None:
                    s = np.round(s, decimals)
                m = max(2, n // 3)
                test_lengths = np.maximum(1, np.round(rng.lognormal(4.0, 0.8, size=m)))
                cases.append({"scores": s.tolist(), "labels": y.tolist(), "lengths": lengths.tolist(),
                              "n_bins": n_bins, "test": {"scores": rng.normal(size=m).tolist(),
                                                         "lengths": test_lengths.tolist()}})
    return cases


def within_bins_reference(skm, s, y, lengths, n_bins) -> float:
    """Per-bin AUROC (scikit-learn) averaged with weights P_b * N_b. Bin = floor(#strictly shorter * n_bins
    / n), so tied lengths share a bin."""
    n = len(y)
    shorter = np.searchsorted(np.sort(lengths), lengths, side="left")
    bins = shorter * n_bins // n
    num = den = 0.0
    for b in np.unique(bins):
        m = bins == b
        P, N = int(y[m].sum()), int((1 - y[m]).sum())
        if P and N:
            num += skm.roc_auc_score(y[m], s[m]) * P * N
            den += P * N
    return num / den if den else math.nan


def test_length_metrics_match_numpy(metrics_ref, skm):
    cases = length_cases()
    outs = run_ref(metrics_ref, cases)
    for case, out in zip(cases, outs):
        s = np.array(case["scores"])
        y = np.array(case["labels"])
        lengths = np.array(case["lengths"], dtype=float)
        where = f"n={len(y)} n_bins={case['n_bins']} distinct lengths={len(np.unique(lengths))}"
        assert "error" not in out, out["error"]
        want = within_bins_reference(skm, s, y, lengths, case["n_bins"])
        if math.isnan(want):
            assert out["auroc_within_bins"] is None, where
        else:
            assert close(out["auroc_within_bins"], want), where
        if case["n_bins"] == 1:
            assert out["auroc_within_bins"] == out["auroc"], where

        slope, intercept = np.polyfit(np.log(lengths), s, 1)
        assert close(out["length_fit"]["slope"], slope), where
        assert close(out["length_fit"]["intercept"], intercept), where
        resid = s - (slope * np.log(lengths) + intercept)
        assert np.max(np.abs(np.array(out["residual"]) - resid)) <= TOL, where
        t_s, t_l = np.array(case["test"]["scores"]), np.array(case["test"]["lengths"])
        t_resid = t_s - (slope * np.log(t_l) + intercept)
        assert np.max(np.abs(np.array(out["test_residual"]) - t_resid)) <= TOL, where
    # Guard on the data: binning changes the answer somewhere (length is a real confound here).
    assert any(o["auroc_within_bins"] is not None and abs(o["auroc_within_bins"] - o["auroc"]) > 0.01
               for o in outs)


def test_length_errors(metrics_ref):
    bad = [{"scores": [0.1, 0.2], "labels": [1, 0], "lengths": [1, 0.5]},
           {"scores": [0.1, 0.2], "labels": [1, 0], "lengths": [1]},
           {"scores": [0.1, 0.2], "labels": [1, 0], "lengths": [1, 2], "n_bins": 0}]
    for out in run_ref(metrics_ref, bad):
        assert "error" in out


# --- Development/test split ---------------------------------------------------------------------------------


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def test_fnv1a64_vectors():
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C  # published FNV-1a 64 test vectors
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


def test_split_matches_python(metrics_ref):
    rng = np.random.default_rng(4)
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789/-_.") + ["é", "ß", "中", "🙂"]
    ids = [f"gsm8k/{i}" for i in range(300)] + [f"math500/test/algebra/{i}.json" for i in range(300)]
    ids += ["".join(rng.choice(alphabet, size=rng.integers(1, 30))) for _ in range(400)]
    for fraction in (0.0, 0.1, 0.3, 0.5, 1.0):
        (out,) = run_ref(metrics_ref, [{"ids": ids, "dev_fraction": fraction}])
        assert "error" not in out, out["error"]
        hashes = [fnv1a64(i.encode("utf-8")) for i in ids]
        assert out["hashes"] == hashes
        parts = ["dev" if (h % 10000) < fraction * 10000 else "test" for h in hashes]
        assert out["parts"] == parts
        assert abs(parts.count("dev") / len(ids) - fraction) <= 0.03
    (out,) = run_ref(metrics_ref, [{"ids": ids}])
    assert out["parts"] == ["dev" if fnv1a64(i.encode()) % 10000 < 3000 else "test" for i in ids]  # default
    for out in run_ref(metrics_ref, [{"ids": [""]}, {"ids": ["a"], "dev_fraction": 1.5}]):
        assert "error" in out
