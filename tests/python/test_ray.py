"""kvlens on Ray (python/kvlens/ray.py), on a local Ray cluster this test starts and stops.

The cluster: `ray start --head` on 127.0.0.1 with 2 CPUs and a temp dir of its own; the workers import kvlens
from PYTHONPATH (the CMake build's package) and carry a marker variable, so that the processes they leave
(kvlens serve children) can be found and ended even when a test fails. Everything is bounded in time.

- eval coe over 40 samples (2 shards on Ray, bindings) = the one-machine CLI run: sample for sample and
  report for report (tests/cli/shard_compare.py; timing fields, the command and the decoding time excluded);
  eval sample likewise on 8 questions.
- a shard's worker process killed (SIGKILL) mid-run: Ray retries the shard, which resumes from its
  directory; the merged run still equals the one-machine run.
- a Serve deployment of 2 replicas of `kvlens serve` (the reasoning model) answers the official OpenAI client,
  streaming included, exactly as `kvlens serve` alone does (greedy), and /v1/models and /v1/embeddings.

Env: KVLENS_BIN, KVLENS_TEST_MODELS_DIR, KVLENS_REASONER_MODEL, PYTHONPATH=<build>/python.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r tests/python/requirements-ray.txt)")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (ray[serve], tests/python/requirements-ray.txt)")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
import shard_compare  # noqa: E402

KVLENS = os.environ.get("KVLENS_BIN", "")
MODELS = os.environ.get("KVLENS_TEST_MODELS_DIR", "")
REASONER = os.environ.get("KVLENS_REASONER_MODEL", "")
TINY = os.path.join(MODELS, "tiny-llama.gguf")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked_pids(marker):
    """Processes whose environment carries the marker (the cluster's workers and their children)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(d))
        except OSError:
            pass
    return out


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cluster():
    if not (os.path.isfile(KVLENS) and os.path.isfile(TINY)):
        pytest.skip("KVLENS_BIN and KVLENS_TEST_MODELS_DIR/tiny-llama.gguf are needed")
    tmp = tempfile.mkdtemp(prefix="kvray")  # short: Ray's socket paths live under it
    marker = f"KVLENS_RAY_TEST={tmp}"
    env = dict(os.environ, KVLENS_RAY_TEST=tmp, RAY_USAGE_STATS_ENABLED="0")
    port = _free_port()
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    stop = [*ray_cli, "stop", "--force"]
    try:
        subprocess.run([*ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", "2", "--temp-dir", os.path.join(tmp, "ray"), "--include-dashboard",
                        "false", "--disable-usage-stats"], env=env, check=True, timeout=180,
                       stdout=subprocess.DEVNULL)
        yield {"address": f"127.0.0.1:{port}", "tmp": tmp, "env": env, "marker": marker}
    finally:
        subprocess.run(stop, env=env, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for pid in _marked_pids(marker):  # what ray stop did not end (a kvlens serve of a replica)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _one_machine_coe(out, *extra):
    subprocess.run([KVLENS, "eval", "coe", "-m", TINY, "--dataset", "arith", "--parallel", "1", "-t", "1",
                    "--bootstrap", "50", "-o", out, *extra], check=True, timeout=300, stderr=subprocess.DEVNULL)


def _ray_eval(c, kind, out, *args, timeout=300, wait=True):
    cmd = [sys.executable, "-m", "kvlens.ray", "eval", kind, "-m", TINY, "--dataset", "arith", "-t", "1",
           "-o", out, "--address", c["address"], "--shards", "2", *args]
    p = subprocess.Popen(cmd, env=c["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return p
    log, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, log[-4000:]
    return log


def _compare(one, merged):
    """shard_compare's one-vs-merged, the kvlens.ray command line (in the report's Command block) excluded."""
    orig = shard_compare.report_lines
    shard_compare.report_lines = lambda d: [ln for ln in orig(d) if not ln.startswith("python -m kvlens.ray")]
    try:
        shard_compare.one_vs_merged(one, merged)
    finally:
        shard_compare.report_lines = orig


def test_eval_coe_on_ray_equals_one_machine(cluster):
    d = os.path.join(cluster["tmp"], "coe")
    t0 = time.time()
    _one_machine_coe(f"{d}-one", "--limit", "40", "-n", "16")
    t1 = time.time()
    log = _ray_eval(cluster, "coe", f"{d}-ray", "--limit", "40", "-n", "16", "--parallel", "1", "--bootstrap",
                    "50")
    t2 = time.time()
    assert "merged 2 shards" in log, log[-2000:]
    _compare(f"{d}-one", f"{d}-ray")
    shard_dirs = [f"{d}-ray.shards/shard-{i}-of-2" for i in range(2)]
    shard_compare.shards(2, shard_dirs)
    print(f"one machine {t1 - t0:.1f} s, Ray (2 shards, with connecting) {t2 - t1:.1f} s")
    # The tiny model answers every question wrong, so most of the report is n/a: with a fixed mix of labels
    # (the same in every directory) the one-machine rerun rewrites its report and the Ray shards, merged
    # again, must give the same AUROCs, configuration chosen on the development part and combined model.
    from kvlens import _kvlens

    shard_compare.relabel([f"{d}-one", *shard_dirs])
    _one_machine_coe(f"{d}-one", "--limit", "40", "-n", "16")
    _kvlens.eval_merge(shard_dirs, f"{d}-relabelled", "python -m kvlens.ray (relabelled shards)")
    _compare(f"{d}-one", f"{d}-relabelled")
    report = open(f"{d}-relabelled/report.md").read()
    for what in ("chosen on dev", "Combined model", "Does KV-CoE reach"):
        assert what in report, f"the mixed-label report lacks {what!r}: the comparison is void"


def test_eval_sample_on_ray_equals_one_machine(cluster):
    d = os.path.join(cluster["tmp"], "sample")
    args = ["--limit", "8", "--n", "1,2", "--max-tokens", "8"]
    subprocess.run([KVLENS, "eval", "sample", "-m", TINY, "--dataset", "arith", "-t", "1", "-o", f"{d}-one",
                    *args], check=True, timeout=300, stderr=subprocess.DEVNULL)
    _ray_eval(cluster, "sample", f"{d}-ray", *args)
    _compare(f"{d}-one", f"{d}-ray")


def _shard_worker(shard_file):
    """The pid of the Ray worker that has this shard's samples.jsonl open (it is writing it)."""
    for d in os.listdir("/proc"):
        if not d.isdigit() or not _cmdline(int(d)).startswith("ray::"):
            continue
        try:
            for fd in os.listdir(f"/proc/{d}/fd"):
                if os.readlink(f"/proc/{d}/fd/{fd}") == shard_file:
                    return int(d)
        except OSError:
            pass
    return None


def test_killed_worker_loses_nothing(cluster):
    d = os.path.join(cluster["tmp"], "kill")
    args = ["--limit", "40", "-n", "48", "--parallel", "1", "--bootstrap", "50"]
    shard_file = f"{d}-ray.shards/shard-0-of-2/samples.jsonl"
    p = _ray_eval(cluster, "coe", f"{d}-ray", *args, "--max-retries", "2", wait=False)
    killed, lines_at_kill = None, 0
    try:
        deadline = time.time() + 240
        while killed is None and time.time() < deadline and p.poll() is None:
            try:
                with open(shard_file, "rb") as f:
                    lines = f.read().count(b"\n")
            except OSError:
                lines = 0
            if lines >= 3:
                pid = _shard_worker(shard_file)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed, lines_at_kill = pid, lines
            time.sleep(0.05)
        assert killed is not None, "never caught shard 0 mid-run (too fast?)"
        log, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, log[-4000:]
    summary = json.load(open(f"{d}-ray.shards/ray-summary.json"))
    s0 = summary["shards"][0]
    assert s0["pid"] != killed, f"shard 0 finished in the killed worker {killed}?"
    assert s0["resumed_samples"] >= lines_at_kill, (s0, lines_at_kill)
    print(f"killed worker {killed} at {lines_at_kill} samples of shard 0; retried in {s0['pid']}, resumed from "
          f"{s0['resumed_samples']}")
    _one_machine_coe(f"{d}-one", "--limit", "40", "-n", "48")
    _compare(f"{d}-one", f"{d}-ray")


def _replica_servers(marker):
    """The kvlens serve processes the cluster's workers started."""
    return [p for p in _marked_pids(marker) if _cmdline(p).startswith(f"{KVLENS} serve ")]


def _wait_http(url, deadline):
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except Exception:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in time")


def _ask(base):
    from openai import OpenAI

    c = OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
    msgs = [{"role": "user", "content": "What is 347+285?"}]
    r = c.chat.completions.create(model="any", messages=msgs, temperature=0, max_tokens=96,
                                  extra_body={"think": "on"})
    stream = c.chat.completions.create(model="any", messages=msgs, temperature=0, max_tokens=96, stream=True,
                                       extra_body={"think": "on", "kvlens": {"scores_every": 8}})
    chunks = [ch.model_dump() for ch in stream]
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    thinking = "".join(ch["choices"][0]["delta"].get("reasoning_content") or ""
                       for ch in chunks if ch["choices"])
    ext = [ch["kvlens"] for ch in chunks if ch.get("kvlens")]
    emb = c.embeddings.create(model="any", input=["a text", "another"])
    msg = r.choices[0].message
    return {"content": msg.content, "reasoning": (msg.model_extra or {}).get("reasoning_content"),
            "kvlens": r.model_extra["kvlens"], "finish": r.choices[0].finish_reason, "usage": r.usage.model_dump(),
            "stream_text": text, "stream_thinking": thinking, "stream_kvlens": ext, "n_chunks": len(chunks),
            "models": [m.id for m in c.models.list().data],
            "embeddings": [e.embedding for e in emb.data]}


def test_serve_two_replicas_answer_as_kvlens_serve(cluster):
    if not os.path.isfile(REASONER):
        pytest.skip("KVLENS_REASONER_MODEL (tools/reasoner/arith-reasoner.gguf) is needed")
    pytest.importorskip("openai", reason="the OpenAI client is not installed (tests/python/requirements.txt)")
    port = _free_port()
    alone_port = _free_port()
    base = f"http://127.0.0.1:{port}"
    srv = subprocess.Popen([sys.executable, "-m", "kvlens.ray", "serve", "-m", REASONER, "--replicas", "2",
                            "--port", str(port), "--address", cluster["address"], "--", "--threads", "1"],
                           env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    alone = subprocess.Popen([KVLENS, "serve", "-m", REASONER, "--port", str(alone_port), "--threads", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = []
    reader = threading.Thread(target=lambda: out.extend(srv.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 300
        while not any("replicas of kvlens serve at" in ln for ln in out):
            assert srv.poll() is None, "".join(out)[-4000:]
            assert time.time() < deadline, "Serve did not come up in 300 s:\n" + "".join(out)[-4000:]
            time.sleep(0.5)
        t0 = time.time()
        got = _ask(base)
        t1 = time.time()
        _wait_http(f"http://127.0.0.1:{alone_port}/health", time.time() + 60)
        want = _ask(f"http://127.0.0.1:{alone_port}")
        print(f"Serve: the requests in {t1 - t0:.1f} s; answer {got['content']!r}")
        assert got["content"] and "Answer" in got["content"], got["content"]
        for k in ("content", "reasoning", "finish", "usage", "stream_text", "stream_thinking", "n_chunks",
                  "models"):
            assert got[k] == want[k], f"{k}: Serve {got[k]!r} vs alone {want[k]!r}"
        assert got["stream_text"] == got["content"] and got["stream_thinking"] == got["reasoning"]
        # The kvlens block, passed through unchanged: the same scores as the server alone gives.
        why = shard_compare.same(got["kvlens"], want["kvlens"], "kvlens")
        assert why is None, why
        assert got["stream_kvlens"] and shard_compare.same(got["stream_kvlens"], want["stream_kvlens"], "s") is None
        assert shard_compare.same(got["embeddings"], want["embeddings"], "embeddings") is None
        # Two replicas, each a kvlens serve of its own (children of the replicas, on loopback ports).
        servers = _replica_servers(cluster["marker"])
        assert len(servers) == 2, [(p, _cmdline(p)) for p in servers]
        # A route error passes through as kvlens serve's own (OpenAI's error shape, status 400).
        req = urllib.request.Request(base + "/v1/chat/completions", data=b'{"messages": 3}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 400 and json.load(e.value)["error"]["param"] == "messages"
    finally:
        alone.terminate()
        srv.send_signal(signal.SIGINT)  # serve.shutdown()
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
        alone.wait(timeout=30)
    # The replicas' servers end with the deployment.
    deadline = time.time() + 60
    while _replica_servers(cluster["marker"]) and time.time() < deadline:
        time.sleep(0.5)
    left = _replica_servers(cluster["marker"])
    assert not left, f"kvlens serve processes left after serve.shutdown: {left}"
