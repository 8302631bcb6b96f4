"""`kvlens eval coe`'s report (write_coe_report in src/eval/coe_eval.cpp) recomputed independently.

A real run of the tiny model on 60 arith questions gives the directory and the records' shape; its
samples.jsonl is then rewritten with synthetic content (seeded numpy; every line keeps its index, id and
keys): labels about half correct (none truncated), lengths correlated with the label, every score of "scores" (some
informative, some tied, neg_length = -n_output_tokens) and every token_grid configuration random, one of them
clearly the best on the development part. The same command run again finds every sample done, so it only
rewrites report.md and summary.json from these records (samples.jsonl must come back byte for byte).

Recomputed here with numpy and scikit-learn, not with kvlens code:
  - the development/test split: 64-bit FNV-1a of the id bytes (the index as text for an empty id), dev iff
    hash % 10000 < dev_fraction * 10000 (src/eval/split.h);
  - per score column, on the test part only: AUROC (roc_auc_score), bootstrap 95% interval (std::mt19937_64
    ported, rng() % n draws, numpy percentiles), AUPR (average_precision_score), FPR95 (roc_curve without
    dropping points), PRR (definition of src/eval/metrics.h, ties spread evenly), AUROC within 5 length bins
    (Mann-Whitney over same-bin pairs), AUROC of the log-length residual fitted on the development part
    (numpy polyfit); the development AUROC of each column;
  - the configuration chosen on the development part (highest dev AUROC over the token_grid keys in sorted
    order, R before C, first maximum wins) and its test metrics;
  - the combined confidence: scikit-learn LogisticRegression(C=1) on the development part's features
    standardised with their population std, applied to the test part;
  - the verdicts' AUROC differences, and the counts.
Every number must agree with summary.json within 1e-9 (the combined model within 1e-6: two solvers), and
report.md must show the same numbers (3 decimals) in the test-part table, the chosen configuration's row and
the dev/test counts. A second case has no correct answer in the development part: the report is still
written, without a chosen configuration or a combined row.

ctest passes the kvlens binary in KVLENS_BIN and the tiny models' folder in KVLENS_TEST_MODELS_DIR.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

TOL = 1e-9
TOL_COMBINED = 1e-6  # kvlens' damped Newton vs scikit-learn's solver
N_SAMPLES = 60
DEV_FRACTION = 0.3  # eval coe's defaults
BOOTSTRAP = 1000
SEED = 0
N_BINS = 5

# coe_report_scores() and combined_features() in src/eval/coe_eval.cpp, written out here on purpose: a change
# there must show up here.
REPORT_SCORES = ["kv_coe_r", "kv_coe_c", "kv_layer_coe_r", "kv_layer_coe_c", "k_layer_coe_r", "k_layer_coe_c",
                 "v_layer_coe_r", "v_layer_coe_c", "hs_coe_r", "hs_coe_c", "max_prob", "inv_ppl",
                 "inv_entropy", "neg_length", "answer_line_prob", "answer_line_min_prob"]
COMBINED_FEATURES = ["kv_coe_r", "kv_coe_c", "kv_layer_coe_r", "kv_layer_coe_c", "max_prob", "inv_ppl",
                     "inv_entropy", "neg_length"]
COMBINED_LABEL = "combined (logistic on the free signals, fit on dev)"
VERDICT_PAIRS = [("kv_coe_r", "hs_coe_r"), ("kv_coe_c", "hs_coe_c"), ("kv_coe_dev", "hs_coe_c"),
                 ("kv_coe_dev", "hs_coe_r")]


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kvlens() -> str:
    exe = os.environ.get("KVLENS_BIN", "")
    if not exe:
        pytest.skip("KVLENS_BIN is not set (ctest sets it to the kvlens binary)")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(f"KVLENS_BIN={exe} is not an executable file (build the kvlens target)")
    return exe


@pytest.fixture(scope="module")
def model(kvlens) -> str:
    d = os.environ.get("KVLENS_TEST_MODELS_DIR", "")
    if not d:
        pytest.skip("KVLENS_TEST_MODELS_DIR is not set (ctest sets it)")
    path = os.path.join(d, "tiny-llama.gguf")
    if not os.path.isfile(path):
        pytest.fail(f"{path} is missing (build the tiny-models target)")
    return path


@pytest.fixture(scope="module")
def sk(kvlens):
    """sklearn, imported after the binary check: when the check runs, a missing scikit-learn is a failure."""
    try:
        import sklearn.linear_model
        import sklearn.metrics
        import sklearn.preprocessing  # noqa: F401
    except ImportError as e:
        pytest.fail(f"scikit-learn is required: pip install -r tests/python/requirements.txt ({e})")
    return sklearn


def eval_coe(exe: str, model: str, out: Path) -> subprocess.CompletedProcess:
    cmd = [exe, "eval", "coe", "-m", model, "--dataset", "arith", "--limit", str(N_SAMPLES), "-n", "8",
           "--parallel", "8", "-t", "1", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def real_run(kvlens, model, tmp_path_factory):
    """One real run; its run.json and records are the template of every case."""
    out = tmp_path_factory.mktemp("coe-report") / "real"
    eval_coe(kvlens, model, out)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == N_SAMPLES
    assert sorted(r["index"] for r in records) == list(range(N_SAMPLES))
    for r in records:
        assert set(REPORT_SCORES) <= set(r["scores"]), sorted(r["scores"])
        assert r["token_grid"] and set(r["token_grid"]) == set(records[0]["token_grid"])
        assert isinstance(r["id"], str)
    return out, records


def synthesize(records: list[dict], seed: int, dev_all_wrong: bool = False) -> list[dict]:
    """The records with synthetic labels, lengths and scores; every other key (and index, id) kept."""
    rng = np.random.default_rng(seed)
    keys = sorted(records[0]["token_grid"])
    best_key = keys[len(keys) // 2]  # not the first: the choice must be made, not fall out of the order
    out = []
    for r in records:
        r = json.loads(json.dumps(r))  # deep copy
        y = int(rng.random() < 0.5)
        if dev_all_wrong and part_of(record_id(r)) == "dev":
            y = 0
        length = int(max(1, round(rng.lognormal(3.2 - 0.5 * y, 0.6))))
        loglen = math.log(length)
        r["correct"] = r["matched"] = bool(y)
        r["truncated"] = False
        r["stop"] = "end_of_turn"
        r["n_output_tokens"] = length
        scores = {}
        for name in sorted(r["scores"]):
            scores[name] = float(rng.normal())  # uninformative unless set below
        scores["kv_coe_r"] = float(0.8 * y + rng.normal())
        scores["kv_coe_c"] = float(0.5 * y - 0.3 * loglen + rng.normal())
        scores["kv_layer_coe_c"] = float(0.4 * y + 0.5 * rng.normal())
        scores["k_layer_coe_c"] = float(np.round(0.5 * y + rng.normal(), 1))  # ties
        scores["hs_coe_r"] = float(0.6 * y + rng.normal())
        scores["hs_coe_c"] = float(0.9 * y + rng.normal())
        scores["max_prob"] = float(np.round(1 / (1 + math.exp(-(0.7 * y + rng.normal()))), 2))  # ties
        scores["inv_ppl"] = float(math.exp(-abs(rng.normal() - 0.5 * y)))
        scores["inv_entropy"] = float(1 / (0.2 + rng.exponential(1.0 - 0.3 * y)))
        scores["neg_length"] = -float(length)
        r["scores"] = scores
        grid = {}
        for key in keys:
            grid[key] = [float(0.2 * y + rng.normal()), float(rng.random())]
        grid[best_key][1] = float(2.5 * y + 0.5 * rng.normal())
        r["token_grid"] = grid
        out.append(r)
    return out


def rerun(exe: str, model: str, real_dir: Path, records: list[dict], out: Path):
    """The real run's run.json with `records` as samples.jsonl; eval coe again; (summary, report.md)."""
    out.mkdir(parents=True)
    shutil.copy(real_dir / "run.json", out / "run.json")
    samples = out / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    before = samples.read_bytes()
    r = eval_coe(exe, model, out)
    assert samples.read_bytes() == before, "eval coe generated again instead of reporting the records"
    assert "eval coe arith [" not in r.stderr + r.stdout, "a progress bar: something was generated"
    return json.loads((out / "summary.json").read_text()), (out / "report.md").read_text()


# --- the reference ------------------------------------------------------------------------------------------


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def record_id(r: dict) -> str:
    return r.get("id") or str(r["index"])


def part_of(qid: str) -> str:
    return "dev" if fnv1a64(qid.encode("utf-8")) % 10000 < DEV_FRACTION * 10000 else "test"


class MT19937_64:
    """std::mt19937_64, so that the bootstrap resamples can be replayed here."""

    MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self.mt = [seed & self.MASK]
        for i in range(1, 312):
            prev = self.mt[-1]
            self.mt.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & self.MASK)
        self.i = 312

    def __call__(self) -> int:
        mt = self.mt
        if self.i >= 312:
            for k in range(312):
                x = (mt[k] & 0xFFFFFFFF80000000) | (mt[(k + 1) % 312] & 0x7FFFFFFF)
                xa = (x >> 1) ^ (0xB5026F5AA96619E9 if x & 1 else 0)
                mt[k] = mt[(k + 156) % 312] ^ xa
            self.i = 0
        x = mt[self.i]
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


def pair_wins(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """W[i, j] = 1 if correct i outscores incorrect j, 1/2 on a tie, 0 otherwise (and for other pairs)."""
    w = (s[:, None] > s[None, :]) + 0.5 * (s[:, None] == s[None, :])
    return w * (y[:, None] == 1) * (y[None, :] == 0)


def bootstrap_interval(s: np.ndarray, y: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """Percentile interval of the AUROCs of the resamples with both classes (rows of `counts`: multiplicities)."""
    w = pair_wins(s, y)
    pos, neg = counts @ y, counts @ (1 - y)
    keep = (pos > 0) & (neg > 0)
    c = counts[keep].astype(float)
    aurocs = np.einsum("ri,ij,rj->r", c, w, c) / (pos[keep] * neg[keep])
    return float(np.percentile(aurocs, 2.5)), float(np.percentile(aurocs, 97.5))


def prr(s: np.ndarray, y: np.ndarray) -> float:
    """(area - accuracy) / (oracle area - accuracy); area = mean over k of the accuracy of the k highest
    scored, the correct answers of a tied group spread evenly over its places."""
    n = len(y)

    def area(key: np.ndarray) -> float:
        order = np.argsort(-key, kind="stable")
        k_sorted, y_sorted = key[order], y[order].astype(float)
        expected = np.empty(n)  # expected number correct among the k highest
        start, done = 0, 0.0
        while start < n:
            end = start
            while end < n and k_sorted[end] == k_sorted[start]:
                end += 1
            g, pos = end - start, y_sorted[start:end].sum()
            expected[start:end] = done + pos * np.arange(1, g + 1) / g
            done += pos
            start = end
        return float(np.mean(expected / np.arange(1, n + 1)))

    accuracy = y.mean()
    return (area(s) - accuracy) / (area(y.astype(float)) - accuracy)


def auroc_within_bins(s: np.ndarray, y: np.ndarray, length: np.ndarray) -> float:
    n = len(y)
    shorter = np.array([(length < l).sum() for l in length])
    bins = shorter * N_BINS // n
    same = bins[:, None] == bins[None, :]
    w = pair_wins(s, y) * same
    pairs = ((y[:, None] == 1) & (y[None, :] == 0) & same).sum()
    return float(w.sum() / pairs) if pairs else math.nan


def column_metrics(sk, s, y, length, dev_s, dev_y, dev_len, counts, residual: bool) -> dict:
    m = sk.metrics
    fpr, tpr, _ = m.roc_curve(y, s, drop_intermediate=False)
    out = {"auroc": m.roc_auc_score(y, s), "aupr": m.average_precision_score(y, s),
           "fpr95": float(fpr[tpr >= 0.95].min()), "prr": prr(s, y),
           "auroc_within_length_bins": auroc_within_bins(s, y, length),
           "auroc_ci": bootstrap_interval(s, y, counts),
           "dev_auroc": m.roc_auc_score(dev_y, dev_s) if 0 < dev_y.sum() < len(dev_y) else math.nan,
           "auroc_length_residual": math.nan}
    if residual:
        if np.all(dev_len == dev_len[0]):
            slope, intercept = 0.0, dev_s.mean()
        else:
            slope, intercept = np.polyfit(np.log(dev_len), dev_s, 1)
        out["auroc_length_residual"] = m.roc_auc_score(y, s - (slope * np.log(length) + intercept))
    return out


def reference(sk, records: list[dict]) -> dict:
    dev = np.array([part_of(record_id(r)) == "dev" for r in records])
    test = ~dev
    y = np.array([int(r["correct"]) for r in records])
    length = np.maximum(1, np.array([r["n_output_tokens"] for r in records])).astype(float)
    columns = {name: np.array([r["scores"][name] for r in records], dtype=float) for name in REPORT_SCORES}
    dev_y = y[dev]
    dev_ok = 0 < dev_y.sum() < len(dev_y)

    # The configuration chosen on the development part.
    selected, ranking = None, []
    best = -1.0
    for key in sorted(records[0]["token_grid"]):
        for which in (0, 1):
            x = np.array([r["token_grid"][key][which] for r in records])
            a = sk.metrics.roc_auc_score(dev_y, x[dev]) if dev_ok else math.nan
            ranking.append(a)
            if a > best:
                best = a
                selected = {"key": key, "score": "RC"[which], "dev_auroc": a}
                columns["kv_coe_dev"] = x
    # The combined model on the development part's standardised features.
    combined = None
    if dev_ok:
        x = np.array([[r["scores"][f] for f in COMBINED_FEATURES] for r in records], dtype=float)
        mean, std = x[dev].mean(0), x[dev].std(0)  # population std, as StandardScaler
        assert np.all(std > 1e-9 * np.abs(mean)), "a constant feature: kvlens would drop it"
        scaler = sk.preprocessing.StandardScaler().fit(x[dev])
        lr = sk.linear_model.LogisticRegression(C=1.0, tol=1e-12, max_iter=100000)
        lr.fit(scaler.transform(x[dev]), dev_y)
        columns["combined"] = lr.predict_proba(scaler.transform(x))[:, 1]
        combined = {"features": COMBINED_FEATURES, "mean": mean, "std": std, "weights": lr.coef_[0],
                    "bias": float(lr.intercept_[0])}

    # The bootstrap's draws are the same for every column: rng() % n_test, n_test per resample.
    g = MT19937_64(SEED)
    n_test = int(test.sum())
    counts = np.zeros((BOOTSTRAP, n_test), dtype=np.int64)
    for r in range(BOOTSTRAP):
        for _ in range(n_test):
            counts[r, g() % n_test] += 1
    metrics = {name: column_metrics(sk, s[test], y[test], length[test], s[dev], dev_y, length[dev], counts,
                                  residual=name != "neg_length")
               for name, s in columns.items()}
    return {"dev": dev, "y": y, "selected": selected, "ranking": sorted(ranking, reverse=True),
            "combined": combined, "metrics": metrics,
            "counts": {"n": len(y), "n_correct": int(y.sum()), "n_truncated": 0, "n_dev": int(dev.sum()),
                       "n_dev_correct": int(dev_y.sum()), "n_test": n_test,
                       "n_test_correct": int(y[test].sum()), "dev_fraction": DEV_FRACTION}}


# --- comparison ---------------------------------------------------------------------------------------------


def close(got, want, tol) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return got is None
    return got is not None and abs(got - want) <= tol


def f3(v) -> str:
    """fmt(v, 3) of src/eval/svg_plot.cpp: fixed, 3 decimals, no sign on a rounded zero; null is n/a."""
    if v is None or math.isnan(v):
        return "n/a"
    s = f"{v:.3f}"
    return s[1:] if s == "-0.000" else s


def table_rows(report: str, section: str = "## Test part") -> dict[str, list[str]]:
    """The rows of the (first) table of a section: first cell -> the other cells (Markdown escapes undone)."""
    section = report.split(section, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0]] = cells[1:]
    return rows


def check_report(summary: dict, report: str, ref: dict):
    for key, want in ref["counts"].items():
        assert summary[key] == want, key
    c = ref["counts"]
    accuracy = 100 * c["n_test_correct"] / c["n_test"]
    assert (f"development {c['n_dev']} samples ({c['n_dev_correct']} correct), test {c['n_test']} "
            f"({c['n_test_correct']} correct, accuracy {accuracy:.1f}%)") in report

    # Every column, on the test part.
    assert set(summary["scores"]) == set(ref["metrics"])
    tol_of = {name: TOL_COMBINED if name == "combined" else TOL for name in ref["metrics"]}
    for name, want in ref["metrics"].items():
        got = summary["scores"][name]
        for key in ("auroc", "aupr", "fpr95", "prr", "auroc_within_length_bins", "auroc_length_residual",
                    "dev_auroc"):
            assert close(got[key], want[key], tol_of[name]), \
                f"{name} {key}: kvlens {got[key]}, reference {want[key]}"
        for g, w in zip(got["auroc_ci"], want["auroc_ci"]):
            assert close(g, w, tol_of[name]), \
                f"{name} auroc_ci: kvlens {got['auroc_ci']}, reference {want['auroc_ci']}"

    # report.md shows the same numbers (3 decimals) as summary.json.
    rows = table_rows(report)
    for name, got in summary["scores"].items():
        assert got["label"] in rows, f"no test-part row '{got['label']}' in report.md"
        lo, hi = got["auroc_ci"]
        assert rows[got["label"]] == [f3(got["auroc"]), f"[{f3(lo)}, {f3(hi)}]", f3(got["aupr"]),
                                      f3(got["fpr95"]), f3(got["prr"]), f3(got["auroc_within_length_bins"]),
                                      f3(got["auroc_length_residual"])], name
    assert len(rows) == len(summary["scores"]) + 2  # + the header and its rule

    # The chosen configuration.
    sel = ref["selected"]
    if sel is None:
        assert summary["selected"] is None
        assert not any("chosen on dev" in label for label in rows)
    else:
        assert summary["selected"]["key"] == sel["key"] and summary["selected"]["score"] == sel["score"]
        assert close(summary["selected"]["dev_auroc"], sel["dev_auroc"], TOL)
        label = f"KV-CoE-{sel['score']} (token axis, chosen on dev: `{sel['key']}`)"
        assert summary["scores"]["kv_coe_dev"]["label"] == label
        assert label in rows

    # The combined model.
    comb = ref["combined"]
    if comb is None:
        assert summary["combined"] is None
        assert COMBINED_LABEL not in rows
    else:
        got = summary["combined"]
        assert got["features"] == comb["features"]
        assert got["ridge"] == 1
        for key in ("mean", "std", "weights"):
            assert np.max(np.abs(np.array(got[key]) - comb[key])) <= TOL_COMBINED, (key, got[key], comb[key])
        assert abs(got["bias"] - comb["bias"]) <= TOL_COMBINED
        assert summary["scores"]["combined"]["label"] == COMBINED_LABEL

    # Verdicts: the AUROC differences on the test part, and the verdict their interval gives.
    pairs = [(a, b) for a, b in VERDICT_PAIRS if a in summary["scores"]]
    assert [(v["kv"], v["hs"]) for v in summary["verdicts"]] == pairs
    for v in summary["verdicts"]:
        want = ref["metrics"][v["kv"]]["auroc"] - ref["metrics"][v["hs"]]["auroc"]
        assert close(v["diff"], want, TOL), v
        lo, hi = v["diff_ci"]
        assert lo <= hi
        assert v["verdict"] == ("no: below hidden-state CoE" if hi < 0 else
                                "yes: above hidden-state CoE" if lo > 0 else "yes: within the interval")


# --- the cases ----------------------------------------------------------------------------------------------


def test_report_matches_reference(kvlens, model, sk, real_run, tmp_path):
    real_dir, records = real_run
    synthetic = synthesize(records, seed=20250104)
    ref = reference(sk, synthetic)

    # Guards on the data: both parts have both classes, the split is not trivial, the chosen configuration
    # wins clearly, length is a real confound, ties occur, and the test part differs from all samples.
    c = ref["counts"]
    assert 0 < c["n_dev_correct"] < c["n_dev"] and 0 < c["n_test_correct"] < c["n_test"]
    assert 12 <= c["n_dev"] <= 30
    assert ref["selected"]["score"] == "C" and ref["ranking"][0] - ref["ranking"][1] > 0.05
    m = ref["metrics"]
    assert abs(m["kv_coe_c"]["auroc_within_length_bins"] - m["kv_coe_c"]["auroc"]) > 0.01
    assert len(np.unique([r["scores"]["max_prob"] for r in synthetic])) < N_SAMPLES
    all_auroc = sk.metrics.roc_auc_score(ref["y"], [r["scores"]["hs_coe_c"] for r in synthetic])
    assert abs(all_auroc - m["hs_coe_c"]["auroc"]) > 1e-3

    summary, report = rerun(kvlens, model, real_dir, synthetic, tmp_path / "run")
    check_report(summary, report, ref)
    assert "combined" in summary["scores"] and "kv_coe_dev" in summary["scores"]
    assert "Combined model not fitted" not in report
    # The development table lists the chosen configuration with its dev AUROC.
    sel = ref["selected"]
    dev_rows = table_rows(report, "## Development part")
    assert dev_rows[f"`{sel['key']}`"][1] == f3(sel["dev_auroc"])  # the C column


def test_dev_part_without_a_correct_answer(kvlens, model, sk, real_run, tmp_path):
    real_dir, records = real_run
    synthetic = synthesize(records, seed=7, dev_all_wrong=True)
    ref = reference(sk, synthetic)
    c = ref["counts"]
    assert c["n_dev_correct"] == 0 and 0 < c["n_test_correct"] < c["n_test"]
    assert ref["selected"] is None and ref["combined"] is None

    summary, report = rerun(kvlens, model, real_dir, synthetic, tmp_path / "run")
    check_report(summary, report, ref)
    assert "combined" not in summary["scores"] and "kv_coe_dev" not in summary["scores"]
    assert all(s["dev_auroc"] is None for s in summary["scores"].values())
    assert "## Development part" in report  # the grid's table is still there, every AUROC n/a


def test_dev_part_without_a_class_is_explained(kvlens, model, sk, real_run, tmp_path):
    real_dir, records = real_run
    summary, report = rerun(kvlens, model, real_dir, synthesize(records, seed=7, dev_all_wrong=True),
                            tmp_path / "run")
    assert "Combined model not fitted" in report or "development part lacks a class" in report


def test_records_without_the_answer_line_scores(kvlens, model, sk, real_run, tmp_path):
    """Runs decoded before the answer-line scores existed still get their report, without those rows."""
    real_dir, records = real_run
    synthetic = synthesize(records, seed=20250104)
    for r in synthetic:
        del r["scores"]["answer_line_prob"], r["scores"]["answer_line_min_prob"]
    summary, report = rerun(kvlens, model, real_dir, synthetic, tmp_path / "run")
    assert "max_prob" in summary["scores"] and "combined" in summary["scores"]
    assert not any(k.startswith("answer_line") for k in summary["scores"])
    assert "answer line" not in report
