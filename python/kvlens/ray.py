"""kvlens on a Ray cluster: sharded evaluation and served replicas (Ray itself is imported only when used).

Sharded evaluation, the arguments of `kvlens eval coe|sample` plus where and how to run:

    python -m kvlens.ray eval coe -m model.gguf --dataset gsm8k --limit 1000 -o runs/gsm8k \\
        [--address auto] [--shards N] [--cpus-per-shard 1] [--max-retries 3] [--shards-dir DIR]

runs shard I/N of the run (`--shard I/N`, eval/shard.h) as one Ray task each, through the bindings (one model
load per shard), into DIR/shard-I-of-N (default DIR: OUT.shards). A task that fails (an exception, or its
worker process or node dying) is retried by Ray up to --max-retries times, and the retry resumes from what the
shard's directory already holds. The shards are then joined by `kvlens eval merge` into OUT: the same
samples.jsonl, run.json and report as a one-machine run. The workers need `import kvlens` (the package
installed, or PYTHONPATH given to `ray start`) and the model and dataset at the same paths; DIR is best on a
shared file system (a shard's files also come back with its result, so the merge works without one, but a
retry on another node then starts that shard afresh).

Serving: `serve(model, ...)` is a Ray Serve application whose replicas each run `kvlens serve` on a free
loopback port and pass every request and response through unchanged (the OpenAI routes, SSE streaming, the
`kvlens` block, errors and status codes):

    from ray import serve
    import kvlens.ray
    serve.run(kvlens.ray.serve("model.gguf", num_replicas=2, args=["--parallel", "4"]), route_prefix="/")

or `python -m kvlens.ray serve -m model.gguf --replicas 2 [--port 8000] [-- kvlens serve flags...]`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence

__all__ = ["run_eval", "serve", "KvlensReplica", "main"]

# Flags of `kvlens eval coe` / `eval sample` (name, type), passed on to the bindings when given; the defaults
# are the C++ ones (kvlens eval coe --help).
_COMMON: List[tuple[str, Any]] = [
    ("--data-dir", str), ("--limit", int), ("--ctx", int), ("--threads", int), ("--kv-source", str),
    ("--coe-layers", str), ("--coe-kv-part", str), ("--coe-positions", str), ("--coe-head-agg", str),
    ("--template", str), ("--think", str), ("--dev-fraction", float), ("--seed", int),
]
_COE: List[tuple[str, Any]] = [("--parallel", int), ("--bootstrap", int)]
_SAMPLE: List[tuple[str, Any]] = [
    ("--part", str), ("--n", str), ("--temp", float), ("--top-k", int), ("--top-p", float), ("--scores", str),
    ("--calibration", str),
]


def _ray() -> Any:
    """The ray module, imported on first use (kvlens itself never needs Ray)."""
    try:
        return importlib.import_module("ray")
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("kvlens.ray needs Ray: pip install -r tests/python/requirements-ray.txt "
                          "(or pip install 'ray[serve]')") from e


# ---------------------------------------------------------------------------------------------- evaluation

def _run_shard(kind: str, params: Dict[str, Any], out_dir: str, shard: str, command_line: str) -> Dict[str, Any]:
    """One shard, in a Ray worker: runs (or resumes) it into out_dir and returns the files a merge reads."""
    from . import _kvlens

    samples = os.path.join(out_dir, "samples.jsonl")
    resumed = 0
    if os.path.exists(samples):
        with open(samples, "rb") as f:
            resumed = sum(1 for line in f if line.endswith(b"\n"))
    fn = _kvlens.run_coe_eval if kind == "coe" else _kvlens.run_sample_eval
    t0 = time.time()
    fn(**params, out=out_dir, shard=shard, command_line=command_line)
    files = {}
    for name in ("run.json", "samples.jsonl"):
        with open(os.path.join(out_dir, name), "rb") as f:
            files[name] = f.read()
    return {"shard": shard, "dir": out_dir, "files": files, "pid": os.getpid(), "resumed_samples": resumed,
            "seconds": round(time.time() - t0, 3), "node": _node_ip()}


def _node_ip() -> str:
    try:
        return str(_ray().util.get_node_ip_address())
    except Exception:  # noqa: BLE001 - informative only
        return ""


def _bring_back(result: Dict[str, Any], local_dir: str) -> None:
    """Writes a shard's returned files where the merge reads them, unless they are there already (a shared
    file system, or this machine)."""
    os.makedirs(local_dir, exist_ok=True)
    for name, data in result["files"].items():
        path = os.path.join(local_dir, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)


def run_eval(kind: str, params: Dict[str, Any], out: str, *, shards: int = 0, address: Optional[str] = None,
             cpus_per_shard: float = 1, max_retries: int = 3, shards_dir: Optional[str] = None,
             command_line: str = "", log: Any = sys.stderr) -> Dict[str, Any]:
    """Runs `kvlens eval <kind>` (kind: coe or sample; params: the bindings' keyword arguments, e.g.
    {"model": ..., "dataset": ..., "limit": 40}) as `shards` Ray tasks (0: one per cpus_per_shard of the
    cluster), retries failed ones (resuming their directories), and merges them into out. Returns a summary
    ({"out", "shards": [per shard: dir, pid, node, resumed_samples, seconds], "seconds"}); raises if a shard
    still fails after max_retries, or the merge refuses (nothing is written to out then)."""
    if kind not in ("coe", "sample"):
        raise ValueError(f"kind {kind!r}: expected coe or sample")
    from . import _kvlens

    ray = _ray()
    t0 = time.time()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    if shards <= 0:
        shards = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_shard))
    params = dict(params)
    params.setdefault("threads", max(1, int(cpus_per_shard)))  # not every core of the node per shard
    out = os.path.abspath(out)
    shards_dir = os.path.abspath(shards_dir or out.rstrip("/") + ".shards")
    dirs = [os.path.join(shards_dir, f"shard-{i}-of-{shards}") for i in range(shards)]
    if not command_line:
        command_line = f"python -m kvlens.ray eval {kind}"
    task = ray.remote(_run_shard).options(num_cpus=cpus_per_shard, max_retries=max_retries,
                                          retry_exceptions=True, name=f"kvlens-eval-{kind}-shard")
    pending = {task.remote(kind, params, d, f"{i}/{shards}", f"{command_line} (shard {i}/{shards})"): i
               for i, d in enumerate(dirs)}
    print(f"kvlens.ray: {shards} shards of eval {kind} on Ray, into {shards_dir}", file=log, flush=True)
    done: Dict[int, Dict[str, Any]] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        r = ray.get(ready[0])  # a shard that failed every retry raises here
        _bring_back(r, dirs[i])
        r.pop("files")
        done[i] = r
        print(f"kvlens.ray: shard {i}/{shards} done in {r['seconds']} s (pid {r['pid']}, node {r['node']}, "
              f"resumed from {r['resumed_samples']} samples)", file=log, flush=True)
    _kvlens.eval_merge(dirs, out, command_line)
    summary = {"out": out, "shards": [done[i] for i in range(shards)], "seconds": round(time.time() - t0, 3)}
    with open(os.path.join(shards_dir, "ray-summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"kvlens.ray: merged {shards} shards into {out} ({summary['seconds']} s)", file=log, flush=True)
    return summary


def _eval_params(kind: str, a: argparse.Namespace) -> Dict[str, Any]:
    params: Dict[str, Any] = {"model": os.path.abspath(a.model)}
    # A config file is given to the workers by its absolute path; a built-in name as it is.
    params["dataset"] = os.path.abspath(a.dataset) if os.path.isfile(a.dataset) else a.dataset
    if a.max_tokens is not None:
        params["max_tokens"] = a.max_tokens
    for flag, _ in _COMMON + (_COE if kind == "coe" else _SAMPLE):
        key = flag[2:].replace("-", "_")
        v = getattr(a, key)
        if v is None:
            continue
        if key == "n":
            v = [int(x) for x in str(v).split(",") if x.strip()]
        elif key == "scores":
            v = [x.strip() for x in str(v).split(",") if x.strip()]
        elif key == "data_dir":
            v = os.path.abspath(v)
        params[key] = v
    return params


def _quote(args: Sequence[str]) -> str:
    return " ".join(a if a and not re.search(r"[\s\"'$]", a) else "'" + a + "'" for a in args)


# ------------------------------------------------------------------------------------------------- serving

def _kvlens_binary(binary: Optional[str]) -> str:
    path = binary or os.environ.get("KVLENS_BIN") or shutil.which("kvlens")
    if not path:
        raise FileNotFoundError("kvlens.ray.serve: no kvlens binary (give binary=, set KVLENS_BIN or put "
                                "kvlens on PATH on every node)")
    return path


class KvlensReplica:
    """One Serve replica: `kvlens serve` on a free loopback port of its node, every request passed through
    (method, path, query, body, Authorization and Content-Type) and the answer passed back as it comes, SSE
    streams chunk by chunk. The replica is unhealthy (and replaced by Serve) when its server has exited."""

    def __init__(self, model: str, args: Sequence[str] = (), binary: Optional[str] = None,
                 startup_timeout_s: float = 300) -> None:
        self._session: Any = None
        for _ in range(3):  # a free port is chosen here; another process may take it first
            port = _free_port()
            self._start([_kvlens_binary(binary), "serve", "-m", model, "--host", "127.0.0.1", "--port",
                         str(port), *args])
            self.base = f"http://127.0.0.1:{port}"
            if self._wait_healthy(time.time() + startup_timeout_s):
                return
        raise RuntimeError(f"kvlens serve did not start (exit {self._proc.returncode}; see the replica's log)")

    def _start(self, cmd: List[str]) -> None:
        # Started from a thread that lives as long as the server, so that PR_SET_PDEATHSIG (which fires when
        # the creating thread ends) stops the server with the replica's process, even on SIGKILL.
        started: "queue.Queue[Any]" = queue.Queue()

        def run() -> None:
            try:
                proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
            except Exception as e:  # noqa: BLE001 - reported to the constructor
                started.put(e)
                return
            started.put(proc)
            proc.wait()

        threading.Thread(target=run, name="kvlens-serve", daemon=True).start()
        got = started.get(timeout=60)
        if isinstance(got, Exception):
            raise got
        self._proc: "subprocess.Popen[bytes]" = got

    def _wait_healthy(self, deadline: float) -> bool:
        import urllib.request

        while self._proc.poll() is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5):
                    return True
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        return False

    def check_health(self) -> None:
        if self._proc.poll() is not None:
            raise RuntimeError(f"kvlens serve exited with {self._proc.returncode}")

    async def __call__(self, request: Any) -> Any:
        # Ray Serve's own dependencies (imported here: kvlens does not need them otherwise).
        aiohttp = importlib.import_module("aiohttp")
        responses = importlib.import_module("starlette.responses")
        Response, StreamingResponse = responses.Response, responses.StreamingResponse

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        path = request.url.path
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        url = self.base + path + (("?" + request.url.query) if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        body = await request.body()
        upstream = await self._session.request(request.method, url, data=body, headers=headers)
        keep = {k: v for k, v in upstream.headers.items()
                if k.lower() in ("content-type", "retry-after", "cache-control")}
        if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream.content.iter_any():
                        yield chunk
                finally:
                    upstream.release()  # a client gone away: the server sees its connection close

            return StreamingResponse(chunks(), status_code=upstream.status, headers=keep)
        data = await upstream.read()
        upstream.release()
        return Response(content=data, status_code=upstream.status, headers=keep)

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child of a replica: SIGTERM when the replica's process dies (Linux: PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - not Linux: the replica's __del__ still stops it
        pass


def serve(model: str, *, num_replicas: int = 2, args: Sequence[str] = (), binary: Optional[str] = None,
          num_cpus: float = 1, name: str = "kvlens", max_ongoing_requests: int = 32,
          **deployment_options: Any) -> Any:
    """A Ray Serve application (for serve.run) of num_replicas replicas, each `kvlens serve -m model *args`
    behind Serve's HTTP proxy: the same routes, streaming and responses as one `kvlens serve`. num_cpus:
    what each replica reserves (give `--threads` in args to match). The model path (made absolute) and the
    kvlens binary must be valid on every node."""
    rserve = importlib.import_module("ray.serve")
    dep = rserve.deployment(KvlensReplica, name=name, num_replicas=num_replicas,
                            ray_actor_options={"num_cpus": num_cpus},
                            max_ongoing_requests=max_ongoing_requests, **deployment_options)
    # The driver's kvlens (binary=, else KVLENS_BIN, else PATH) when it has one: the nodes are expected to
    # have it at the same path; else each replica looks on its own node.
    binary = binary or os.environ.get("KVLENS_BIN") or shutil.which("kvlens")
    return dep.bind(os.path.abspath(model), list(args), os.path.abspath(binary) if binary else None)


# --------------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvlens.ray", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="a sharded kvlens eval coe / eval sample run on Ray")
    evsub = ev.add_subparsers(dest="kind", required=True)
    for kind, extra in (("coe", _COE), ("sample", _SAMPLE)):
        e = evsub.add_parser(kind, help=f"kvlens eval {kind}, as shards on Ray, merged", allow_abbrev=False)
        e.add_argument("-m", "--model", required=True)
        e.add_argument("--dataset", required=True)
        e.add_argument("-o", "--out", required=True)
        e.add_argument(*(["-n", "--max-tokens"] if kind == "coe" else ["--max-tokens"]), dest="max_tokens",
                       type=int)
        for flag, typ in _COMMON + extra:
            e.add_argument(*(["-t", flag] if flag == "--threads" else [flag]), type=typ)
        g = e.add_argument_group("Ray")
        g.add_argument("--address", help="the cluster (ray.init's address; default: RAY_ADDRESS, else a new "
                                         "local one; 'auto': the one on this node)")
        g.add_argument("--shards", type=int, default=0, help="number of shards (default: the cluster's CPUs "
                                                             "/ --cpus-per-shard)")
        g.add_argument("--cpus-per-shard", type=float, default=1, help="CPUs a shard's task reserves (and its "
                                                                       "threads unless -t is given)")
        g.add_argument("--max-retries", type=int, default=3, help="retries of a failed shard (it resumes)")
        g.add_argument("--shards-dir", help="where the shards' directories go (default: OUT.shards)")
    sv = sub.add_parser("serve", help="Ray Serve replicas of kvlens serve")
    sv.add_argument("-m", "--model", required=True)
    sv.add_argument("--replicas", type=int, default=2)
    sv.add_argument("--num-cpus", type=float, default=1, help="CPUs each replica reserves")
    sv.add_argument("--host", default="127.0.0.1", help="Serve's HTTP proxy address")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--address", help="the cluster (as for eval)")
    sv.add_argument("--binary", help="the kvlens binary on the nodes (default: KVLENS_BIN, else PATH)")
    sv.add_argument("args", nargs=argparse.REMAINDER, help="-- then flags for each kvlens serve")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    if a.command == "eval":
        params = _eval_params(a.kind, a)
        run_eval(a.kind, params, a.out, shards=a.shards, address=a.address, cpus_per_shard=a.cpus_per_shard,
                 max_retries=a.max_retries, shards_dir=a.shards_dir,
                 command_line="python -m kvlens.ray " + _quote(argv))
        return 0
    ray = _ray()
    rserve = importlib.import_module("ray.serve")
    ray.init(address=a.address)
    rserve.start(http_options={"host": a.host, "port": a.port})
    extra = [x for x in a.args if x != "--"]
    rserve.run(serve(a.model, num_replicas=a.replicas, args=extra, binary=a.binary, num_cpus=a.num_cpus),
               route_prefix="/")
    print(f"kvlens.ray: {a.replicas} replicas of kvlens serve at http://{a.host}:{a.port}/v1", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        rserve.shutdown()
    return 0


if __name__ == "__main__":
    # As kvlens.ray, not __main__: Ray then ships its functions by reference (imported on the workers).
    from kvlens.ray import main as _main

    sys.exit(_main())
