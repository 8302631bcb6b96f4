"""KV-CoE scores (src/methods/coe.h) against an independent numpy implementation of method.md section 2.

The C++ side is driven through the test-only tool coe-ref (tools/coe_ref): chains in as JSON lines, scores out.

Environment:
  KVLENS_COE_REF   path to the coe-ref binary (ctest sets it); unset -> skipped, set but not executable -> fail

The reference follows method.md's formulas and the degenerate-case conventions documented in coe.h:
  - fewer than 2 states: no step, every score 0, status no_step
  - a zero state: every angle involving it is 0, status zero_norm
  - ||h_N - h_0|| == 0: magnitude normaliser 1, status equal_endpoints
  - angle(h_N, h_0) == 0: angle normaliser 1, status parallel_endpoints
  - angles within 1e-6 of 0 or pi are snapped to exactly 0 or pi
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pytest

TOL = 1e-9
SNAP = 1e-6

NO_STEP, ZERO_NORM, EQUAL_ENDPOINTS, PARALLEL_ENDPOINTS = 1, 2, 4, 8


# ---- the reference ------------------------------------------------------------------------------------------

def ref_angle(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    theta = float(np.arccos(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0)))
    if theta < SNAP:
        return 0.0
    if theta > np.pi - SNAP:
        return float(np.pi)
    return theta


def ref_scores(chain) -> dict:
    h = np.asarray(chain, dtype=np.float64)
    n = h.shape[0] - 1
    if n == 0:
        return dict(mag=0.0, ang=0.0, r=0.0, c=0.0, m=[], a=[], endpoint_dist=0.0, endpoint_angle=0.0,
                    status=NO_STEP)
    status = 0
    if np.any(np.all(h == 0, axis=1)):
        status |= ZERO_NORM
    d_mag = float(np.linalg.norm(h[-1] - h[0]))
    d_ang = ref_angle(h[-1], h[0])
    mag_norm, ang_norm = d_mag, d_ang
    if d_mag == 0:
        mag_norm = 1.0
        status |= EQUAL_ENDPOINTS
    if d_ang == 0:
        ang_norm = 1.0
        status |= PARALLEL_ENDPOINTS
    m = np.linalg.norm(np.diff(h, axis=0), axis=1) / mag_norm
    a = np.array([ref_angle(h[i + 1], h[i]) for i in range(n)]) / ang_norm
    c = math.hypot(np.mean(m * np.cos(a)), np.mean(m * np.sin(a)))
    return dict(mag=float(m.mean()), ang=float(a.mean()), r=float(m.mean() - a.mean()), c=c, m=m.tolist(),
                a=a.tolist(), endpoint_dist=d_mag, endpoint_angle=d_ang, status=status)


# ---- the chains ---------------------------------------------------------------------------------------------

def random_chains():
    rng = np.random.default_rng(20260120)
    cases = []
    for n_states in (2, 3, 5, 12, 31, 33):
        for width in (1, 2, 3, 64, 577):
            cases.append((f"gauss_{n_states}x{width}", rng.standard_normal((n_states, width))))
    # A drifting trajectory like a residual stream: each state adds a small update to the previous one.
    walk = np.cumsum(rng.standard_normal((30, 384)) * 0.1, axis=0) + rng.standard_normal(384) * 3
    cases.append(("random_walk_30x384", walk))
    cases.append(("scaled_1e-20", rng.standard_normal((6, 16)) * 1e-20))
    cases.append(("scaled_1e20", rng.standard_normal((6, 16)) * 1e20))
    cases.append(("offset_mean", rng.standard_normal((9, 40)) + 50.0))
    return cases


def special_chains():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal(8), rng.standard_normal(8)
    e = np.eye(5)
    return [
        ("repeated_states", np.stack([x, x, y, y, y, 2 * x, rng.standard_normal(8)])),
        ("orthogonal_basis", e),
        ("orthogonal_scaled", e * np.arange(1, 6)[:, None]),
        ("antiparallel_flip", np.stack([x, -x, x, -x, 2 * x, -3 * x])),  # endpoints antiparallel: angle pi
        ("antiparallel_endpoints", np.stack([x, y, -x])),
        ("width1_signs", np.array([[1.0], [-2.0], [3.0], [0.5], [-1.0]])),
        ("quarter_turns", np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])),
        # degenerate
        ("single_state", x[None, :]),
        ("single_zero_state", np.zeros((1, 4))),
        ("all_zero", np.zeros((4, 6))),
        ("zero_start", np.stack([np.zeros(8), x, y])),
        ("zero_middle", np.stack([x, np.zeros(8), y, x + y])),
        ("zero_end", np.stack([x, y, np.zeros(8)])),
        ("constant_chain", np.stack([x] * 5)),
        ("loop_identical_endpoints", np.stack([x, y, x + y, x])),
        ("parallel_endpoints_x2", np.stack([x, y, 2 * x])),  # power-of-two multiple: exactly parallel
        ("parallel_endpoints_x3", np.stack([x, y, 3 * x])),  # rounding makes the angle ~1e-8: snapped to 0
        ("parallel_endpoints_then_stop", np.stack([x, 0.5 * x])),
        # true angles of ~7e-8 rad: arccos returns them as noise, and both sides snap them to 0
        ("tiny_step_angle", np.stack([x, x + 1e-7 * y, y])),
        ("nearly_parallel_endpoints", np.stack([x, y, x + 1e-7 * y])),
        ("small_endpoint_angle", np.stack([x, y, x + 1e-4 * y])),  # ~1e-4 rad: resolved, not snapped
        ("two_identical_states", np.stack([y, y])),
    ]


ALL_CHAINS = random_chains() + special_chains()


# ---- the driver ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coe_ref() -> str:
    b = os.environ.get("KVLENS_COE_REF", "")
    if not b:
        pytest.skip("KVLENS_COE_REF is not set (ctest's python_coe_reference sets it to the coe-ref binary)")
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        pytest.fail(f"KVLENS_COE_REF={b} is not an executable file (build the coe-ref target first)")
    return b


def run_ref(binary: str, lines) -> list:
    r = subprocess.run([binary], input="".join(l + "\n" for l in lines), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(out) == len(lines), r.stdout
    return out


@pytest.fixture(scope="module")
def cpp_scores(coe_ref) -> dict:
    lines = [json.dumps({"chain": h.tolist()}) for _, h in ALL_CHAINS]
    return dict(zip([name for name, _ in ALL_CHAINS], run_ref(coe_ref, lines)))


def close(got: float, want: float) -> bool:
    return math.isfinite(got) and abs(got - want) <= TOL * max(1.0, abs(want))


@pytest.mark.parametrize("name,chain", ALL_CHAINS, ids=[n for n, _ in ALL_CHAINS])
def test_scores_match_numpy(cpp_scores, name, chain):
    got, want = cpp_scores[name], ref_scores(chain)
    assert "error" not in got, got
    assert got["status"] == want["status"], (got["status_names"], want["status"])
    for key in ("mag", "ang", "r", "c", "endpoint_dist", "endpoint_angle"):
        assert close(got[key], want[key]), f"{key}: C++ {got[key]!r} vs numpy {want[key]!r}"
    for key in ("m", "a"):
        assert len(got[key]) == len(want[key]) == max(len(chain) - 1, 0), key
        for i, (g, w) in enumerate(zip(got[key], want[key])):
            assert close(g, w), f"{key}[{i}]: C++ {g!r} vs numpy {w!r}"


def test_expected_values_by_hand(cpp_scores):
    """Chains whose scores follow from geometry alone: an anchor that depends on neither implementation."""
    q = cpp_scores["quarter_turns"]  # 2 steps of length sqrt(2) and angle pi/2; endpoints 2 apart, angle pi
    assert q["m"] == pytest.approx([math.sqrt(0.5)] * 2, abs=1e-15)
    assert q["a"] == pytest.approx([0.5, 0.5], abs=1e-15)
    assert q["c"] == pytest.approx(math.sqrt(0.5), abs=1e-15)
    o = cpp_scores["orthogonal_basis"]  # 4 steps of length sqrt(2) and angle pi/2; endpoints likewise
    assert o["m"] == pytest.approx([1.0] * 4, abs=1e-15)
    assert o["a"] == pytest.approx([1.0] * 4, abs=1e-15)
    assert o["r"] == pytest.approx(0.0, abs=1e-15)
    w = cpp_scores["width1_signs"]  # angles are 0 (same sign) or pi (sign flip); endpoints 1 -> -1: pi
    assert w["a"] == [1.0, 1.0, 0.0, 1.0]
    assert w["endpoint_angle"] == math.pi


def test_degenerate_cases_are_finite_and_flagged(cpp_scores):
    expect = {
        "single_state": NO_STEP,
        "single_zero_state": NO_STEP,
        "all_zero": ZERO_NORM | EQUAL_ENDPOINTS | PARALLEL_ENDPOINTS,
        "zero_start": ZERO_NORM | PARALLEL_ENDPOINTS,
        "zero_middle": ZERO_NORM,
        "zero_end": ZERO_NORM | PARALLEL_ENDPOINTS,
        "constant_chain": EQUAL_ENDPOINTS | PARALLEL_ENDPOINTS,
        "loop_identical_endpoints": EQUAL_ENDPOINTS | PARALLEL_ENDPOINTS,
        "parallel_endpoints_x2": PARALLEL_ENDPOINTS,
        "parallel_endpoints_x3": PARALLEL_ENDPOINTS,
        "parallel_endpoints_then_stop": PARALLEL_ENDPOINTS,
        "tiny_step_angle": 0,
        "nearly_parallel_endpoints": PARALLEL_ENDPOINTS,
        "small_endpoint_angle": 0,
        "two_identical_states": EQUAL_ENDPOINTS | PARALLEL_ENDPOINTS,
        "antiparallel_flip": 0,
        "repeated_states": 0,
    }
    for name, status in expect.items():
        s = cpp_scores[name]
        assert s["status"] == status, (name, s["status_names"])
        for key in ("mag", "ang", "r", "c", "endpoint_dist", "endpoint_angle"):
            assert math.isfinite(s[key]), (name, key)
        assert all(math.isfinite(v) for v in s["m"] + s["a"]), name
    for name in ("single_state", "single_zero_state", "all_zero", "constant_chain", "two_identical_states"):
        s = cpp_scores[name]
        assert (s["mag"], s["ang"], s["r"], s["c"]) == (0, 0, 0, 0), name
    # Repeated states: those steps have length 0 and angle exactly 0.
    rep = cpp_scores["repeated_states"]
    assert rep["m"][0] == rep["a"][0] == rep["m"][2] == rep["a"][2] == 0
    assert cpp_scores["tiny_step_angle"]["a"][0] == 0


def test_rejected_inputs_give_errors(coe_ref):
    lines = ['{"chain": []}', '{"chain": [[]]}', '{"chain": [[1, 2], [3]]}', '{"chain": [[1, NaN]]}',
             '{"chain": [[1, 1e200], [1, 2]]}', '{"chain": [[1, "x"]]}', "not json", '{"other": 1}']
    for line, out in zip(lines, run_ref(coe_ref, lines)):
        assert list(out) == ["error"] and out["error"], (line, out)
