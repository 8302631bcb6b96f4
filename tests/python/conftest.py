"""Shared fixtures for the Python reference checks.

Environment:
  KVLENS_BIN                 the kvlens binary (ctest sets it); unset -> the tests that need it are skipped,
                             set but not executable -> they fail
  KVLENS_SMOLLM2             path to SmolLM2-135M-Instruct.Q4_1.gguf; unset -> scripts/fetch_model.sh gets it
  KVLENS_ALLOW_SKIP_SMOLLM2  =1: skip (instead of fail) when SmolLM2 cannot be obtained
  KVLENS_TEST_MODELS_DIR     directory with tiny-llama.gguf, tiny-qwen2.gguf, tiny-qwen3.gguf;
                             unset -> the tiny-model tests are skipped
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List

import pytest

import reference_forward as rf

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch_model.sh"

_REPORT: List[str] = []


def report(line: str = "") -> None:
    """Lines shown in the terminal summary even under -q (ctest's output keeps them)."""
    _REPORT.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _REPORT:
        terminalreporter.section("kvlens reference check")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def kvlens_bin() -> str:
    b = os.environ.get("KVLENS_BIN", "")
    if not b:
        pytest.skip("KVLENS_BIN is not set (ctest sets it to <build>/bin/kvlens)")
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        pytest.fail(f"KVLENS_BIN={b} is not an executable file (build the kvlens target first)")
    return b


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    allow_skip = os.environ.get("KVLENS_ALLOW_SKIP_SMOLLM2") == "1"

    def unavailable(msg: str):
        if allow_skip:
            pytest.skip(f"SmolLM2 unavailable (KVLENS_ALLOW_SKIP_SMOLLM2=1): {msg}")
        pytest.fail(f"SmolLM2 unavailable: {msg} (set KVLENS_SMOLLM2=<gguf> or "
                    f"KVLENS_ALLOW_SKIP_SMOLLM2=1 to skip)")

    p = os.environ.get("KVLENS_SMOLLM2", "")
    if p:
        if not os.path.isfile(p):
            unavailable(f"KVLENS_SMOLLM2={p} does not exist")
        return p
    try:
        r = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        unavailable(f"{FETCH_SCRIPT} could not run: {e}")
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()
        unavailable(f"{FETCH_SCRIPT} failed: {err[-1] if err else 'exit ' + str(r.returncode)}")
    lines = r.stdout.strip().splitlines()
    if not lines or not os.path.isfile(lines[-1]):
        unavailable(f"{FETCH_SCRIPT} printed no model path")
    return lines[-1]


@pytest.fixture(scope="session")
def smollm2(smollm2_path) -> rf.GGUFModel:
    return rf.GGUFModel(smollm2_path)


@pytest.fixture(scope="session")
def test_models_dir() -> Path:
    d = os.environ.get("KVLENS_TEST_MODELS_DIR", "")
    if not d:
        pytest.skip("KVLENS_TEST_MODELS_DIR is not set (ctest sets it to <build>/test-models)")
    return Path(d)
