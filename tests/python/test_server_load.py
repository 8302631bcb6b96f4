"""A short load and fault run against kvlens serve (tests/python/load_server.py; issue 15 part 4): 8 clients for
20 s mixing chat, streaming, n = 2, think auto, embeddings, slow and dropping clients, malformed, oversized and
invalid bodies. No 5xx, every greedy answer equal to the same request alone, every refusal a 4xx naming its
parameter, descriptors back to the start count, a clean SIGTERM. RSS growth is bounded at 25% here (a 20 s run
on a loaded CI machine is noisy; the 120 s run in docs/results/reliability holds it to 5%): what it catches is
the allocator regression that grew RSS 50-120% in 40 s."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_load_and_faults(tmp_path):
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, os.path.join(HERE, "load_server.py"), "--bin", os.environ["KVLENS_BIN"],
                        "--model", os.environ["KVLENS_REASONER_MODEL"], "--router", os.environ["KVLENS_ROUTER"],
                        "--duration", "20", "--clients", "8", "--threads", "1", "--max-rss-growth", "0.25",
                        "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert out.exists(), r.stdout + r.stderr
    s = json.loads(out.read_text())
    assert r.returncode == 0, s["problems"]
    assert s["5xx"] == 0 and s["failed"] == 0 and s["requests"] > 100, s
    kinds = set(s["by_kind"])
    assert {"chat", "stream", "n2", "embeddings", "dropped", "slow", "malformed", "oversized", "invalid"} <= kinds
    assert s["fds_end"] == s["fds_start"] and s["shutdown_rc"] == 0
