#!/usr/bin/env python3
"""Load and fault run against `kvlens serve` on loopback (issue 15, part 4). Bounded in time; stops by itself.

1. Starts the server (free port, the reasoning model with its router) and computes the reference answer of every
   greedy request kind, each sent alone.
2. Warm-up: one concurrent round of every kind (allocator pools, thread pools), then the server's RSS and
   open file descriptors are read from /proc: the *start* figures.
3. For --duration seconds, --clients threads send a seeded mix: chat (non-streaming and streaming), n = 2,
   think auto, embeddings, slow readers (one byte a second for a few seconds, then they go away), clients that
   drop mid-stream, malformed JSON, oversized bodies, wrong types. Every greedy answer is compared with its
   reference; every refusal must be a 4xx in OpenAI's shape naming the parameter.
4. Waits for the dropped connections to be released, reads RSS and descriptors again (*end*), checks /health,
   sends SIGTERM with requests in flight and times the exit.

Prints a JSON summary (and writes it with --out). Exit status 1 when any check fails: a 5xx, an output that
differs from the request run alone, an error not naming its parameter, RSS growth >= --max-rss-growth (5%),
descriptors not back
to the start count, an unclean or slow shutdown.

  python3 tests/python/load_server.py --bin build/bin/kvlens --model tools/reasoner/arith-reasoner.gguf \\
      --router docs/results/router-reasoner/router.json --duration 120 --clients 8 --out load.json
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

QUESTIONS = ["What is 347+285?", "What is 12*13?", "What is 905-478?", "What is 64+29+8?"]


class Server:
    def __init__(self, bin_path, args):
        self.p = subprocess.Popen([bin_path, "serve", "--port", "0"] + args, stderr=subprocess.PIPE, text=True)
        line = self.p.stderr.readline()
        m = re.search(r"http://[\d.]+:(\d+)", line)
        if not m:
            raise SystemExit(f"server did not start: {line!r}")
        self.port = int(m.group(1))
        self.err = []
        self.err_reader = threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True)
        self.err_reader.start()

    def rss_kb(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def rss_parts_kb(self):
        """RssAnon (heap, stacks, buffers) and RssFile (pages of the mmapped model file touched so far)."""
        parts = {}
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith(("RssAnon:", "RssFile:")):
                parts[line.split(":")[0]] = int(line.split()[1])
        return parts

    def rss_by_mapping_kb(self):
        """{mapping: RSS kB} from /proc/PID/smaps: which mappings a growth is in (heap arenas, thread stacks...)."""
        out, key = {}, None
        for line in open(f"/proc/{self.p.pid}/smaps"):
            f = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                key = f[0] + " " + (f[5] if len(f) > 5 else "[anon]")
            elif f[0] == "Rss:":
                out[key] = int(f[1])
        return out

    def rss_kb_trimmed(self):
        """RSS after glibc's malloc_trim(0) in the server (gdb attached for a moment): heap memory that is free
        but not yet returned to the system is released, so what remains above the start figure is in use."""
        subprocess.run(["gdb", "-p", str(self.p.pid), "-batch", "-ex", "call (int)malloc_trim(0)"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        return self.rss_kb()

    def fds(self):
        return len(os.listdir(f"/proc/{self.p.pid}/fd"))


def request(port, body, path="/v1/chat/completions", timeout=120, raw_body=None):
    """(status, parsed JSON or text, seconds)."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    c.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode("utf-8", "replace")
    c.close()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    return r.status, parsed, time.monotonic() - t0


def stream(port, body, timeout=120):
    """(status, concatenated content, seconds) of a streamed chat completion."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}).encode(),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        text = r.read().decode()
        c.close()
        return r.status, text, time.monotonic() - t0
    content, reasoning = [], []
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for ch in json.loads(line[6:]).get("choices", []):
            d = ch.get("delta", {})
            content.append(d.get("content") or "")
            reasoning.append(d.get("reasoning_content") or "")
    c.close()
    return 200, ("".join(reasoning), "".join(content)), time.monotonic() - t0


def chat(q, max_tokens=48, **kw):
    return {"messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": max_tokens, **kw}


def answer_of(resp):
    m = resp["choices"][0]["message"]
    return (m.get("reasoning_content") or "", m.get("content") or "")


def drop_mid_stream(port, body, read_bytes):
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps({**body, "stream": True}).encode()
    c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    read_bytes = max(read_bytes, 12)  # at least the status line's start
    while len(got) < read_bytes:
        b = c.recv(read_bytes - len(got))
        if not b:
            break
        got += b
    c.close()
    return got.startswith(b"HTTP/1.1 200")


def slow_reader(port, body, seconds):
    """Reads one byte a second for `seconds`, then goes away."""
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    data = json.dumps({**body, "stream": True}).encode()
    c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    first = c.recv(1)
    for _ in range(seconds):
        time.sleep(1)
        if not c.recv(1):
            break
    c.close()
    return first == b"H"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--router", required=True)
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup-rounds", type=int, default=10, help="requests per client before the start figures")
    ap.add_argument("--max-rss-growth", type=float, default=0.05, help="RSS end / start - 1 allowed")
    ap.add_argument("--probe-trim", action="store_true",
                    help="diagnosis: also read RSS at start and end after malloc_trim(0) in the server (needs gdb)")
    ap.add_argument("--out")
    a = ap.parse_args()

    srv = Server(a.bin, ["-m", a.model, "--router", a.router, "-t", str(a.threads), "--parallel", str(a.parallel),
                         "--queue", "64", "--http-threads", str(a.clients + 8), "--max-body-bytes", "65536",
                         "--ctx", "1024"])
    port = srv.port
    problems = []

    # 1. References: each greedy kind alone.
    kinds = {}
    for i, q in enumerate(QUESTIONS):
        kinds[f"chat{i}"] = chat(q)
        kinds[f"think_auto{i}"] = chat(q, think="auto")
    kinds["n2"] = chat(QUESTIONS[0], n=2, kvlens={"select": "majority", "matcher": "last_number"})
    ref = {}
    for name, body in kinds.items():
        st, resp, _ = request(port, body)
        if st != 200:
            raise SystemExit(f"reference {name}: {st} {resp}")
        ref[name] = [answer_of({"choices": [c]}) for c in resp["choices"]] if name == "n2" else answer_of(resp)
    st, emb_ref, _ = request(port, {"input": ["two plus two", "the KV cache"]}, "/v1/embeddings")
    assert st == 200, emb_ref
    emb_ref = [d["embedding"] for d in emb_ref["data"]]

    # The mix; each returns (kind, status, ok, seconds).
    def run_one(rng):
        r = rng.random()
        name = rng.choice([k for k in kinds if k != "n2"])
        if r < 0.25:
            st, resp, dt = request(port, kinds[name])
            return "chat", st, st == 200 and answer_of(resp) == ref[name], dt
        if r < 0.45:
            st, got, dt = stream(port, kinds[name])
            return "stream", st, st == 200 and got == ref[name], dt
        if r < 0.52:
            st, resp, dt = request(port, kinds["n2"])
            ok = st == 200 and [answer_of({"choices": [c]}) for c in resp["choices"]] == ref["n2"]
            return "n2", st, ok, dt
        if r < 0.64:
            st, resp, dt = request(port, {"input": ["two plus two", "the KV cache"]}, "/v1/embeddings")
            ok = st == 200 and all(max(abs(x - y) for x, y in zip(d["embedding"], e)) < 1e-5
                                   for d, e in zip(resp["data"], emb_ref))
            return "embeddings", st, ok, dt
        if r < 0.70:
            t0 = time.monotonic()
            ok = drop_mid_stream(port, chat(rng.choice(QUESTIONS), 200), rng.randint(1, 400))
            return "dropped", 200 if ok else 0, ok, time.monotonic() - t0
        if r < 0.74:
            t0 = time.monotonic()
            ok = slow_reader(port, chat(rng.choice(QUESTIONS), 200), rng.randint(2, 5))
            return "slow", 200 if ok else 0, ok, time.monotonic() - t0
        if r < 0.82:
            st, resp, dt = request(port, None, raw_body=b'{"messages": [{"role": "user", "content": "x"')
            return "malformed", st, st == 400 and isinstance(resp, dict) and "error" in resp, dt
        if r < 0.88:
            st, resp, dt = request(port, None, raw_body=b'{"input": "' + b"a" * 70000 + b'"}', path="/v1/embeddings")
            return "oversized", st, st == 413, dt
        bad = rng.choice([({"messages": "hi"}, "messages"), ({**chat("q"), "max_tokens": "x"}, "max_tokens"),
                          ({**chat("q"), "n": 1000}, "n"), ({"input": [1, 2]}, "input")])
        path = "/v1/embeddings" if "input" in bad[0] else "/v1/chat/completions"
        st, resp, dt = request(port, bad[0], path)
        ok = st == 400 and isinstance(resp, dict) and resp.get("error", {}).get("param", "").startswith(bad[1])
        return "invalid", st, ok, dt

    results, lock = [], threading.Lock()

    def client(i, until, rounds=None):
        rng = random.Random(a.seed * 1000 + i)
        k = 0
        while (rounds is None and time.monotonic() < until) or (rounds is not None and k < rounds):
            try:
                out = run_one(rng)
            except Exception as e:  # a connection the server broke: a failure, not a crash of the run
                out = ("exception", 0, False, 0.0)
                problems.append(f"client {i}: {type(e).__name__}: {e}")
            with lock:
                results.append(out)
            k += 1

    # 2. Warm-up round, then the start figures.
    ts = [threading.Thread(target=client, args=(100 + i, 0, a.warmup_rounds)) for i in range(a.clients)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    warm = len(results)
    results.clear()
    time.sleep(6)  # keep-alive connections of the warm-up close
    rss0, fds0, rss0_parts = srv.rss_kb(), srv.fds(), srv.rss_parts_kb()
    rss0_trim = srv.rss_kb_trimmed() if a.probe_trim else None
    maps0 = srv.rss_by_mapping_kb() if a.probe_trim else None

    # 3. The run.
    t_start = time.monotonic()
    until = t_start + a.duration
    ts = [threading.Thread(target=client, args=(i, until)) for i in range(a.clients)]
    [t.start() for t in ts]
    rss_series = []  # (seconds into the run, RSS kB): a leak grows with the requests, allocator pools level off
    while any(t.is_alive() for t in ts):
        rss_series.append((round(time.monotonic() - t_start, 1), srv.rss_kb()))
        time.sleep(max(1.0, a.duration / 20))
    [t.join() for t in ts]
    wall = time.monotonic() - t_start

    # 4. Settle, end figures, health, shutdown with requests in flight.
    time.sleep(6)
    rss1, fds1, rss1_parts = srv.rss_kb(), srv.fds(), srv.rss_parts_kb()
    rss1_trim = srv.rss_kb_trimmed() if a.probe_trim else None
    maps1 = srv.rss_by_mapping_kb() if a.probe_trim else None
    if a.probe_trim:  # the mappings that grew most, after the trim at both ends
        grew = sorted(((maps1.get(k, 0) - maps0.get(k, 0), k) for k in set(maps0) | set(maps1)), reverse=True)
        print("RSS growth by mapping (kB):", [(d, k) for d, k in grew[:12]], file=sys.stderr)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/health")
    health = c.getresponse().status
    c.close()
    inflight_out = []

    def inflight_request():
        try:
            st, resp, _ = request(port, chat(QUESTIONS[0], 200), timeout=60)
            inflight_out.append(str(st))
        except Exception as e:  # the server closed the connection while going down
            inflight_out.append(type(e).__name__)

    inflight = [threading.Thread(target=inflight_request) for _ in range(2)]
    [t.start() for t in inflight]
    time.sleep(0.5)
    t0 = time.monotonic()
    srv.p.send_signal(signal.SIGTERM)
    try:
        rc = srv.p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        srv.p.kill()
        rc = "hung"
    exit_s = time.monotonic() - t0
    srv.err_reader.join(timeout=10)  # its last lines ("server stopped") may still be in the pipe when it exits
    [t.join(timeout=60) for t in inflight]

    by_kind = {}
    for kind, st, ok, dt in results:
        b = by_kind.setdefault(kind, {"n": 0, "failed": 0, "5xx": 0, "lat": []})
        b["n"] += 1
        b["failed"] += not ok
        b["5xx"] += 500 <= st < 600
        b["lat"].append(dt)
    lat = sorted(dt for kind, st, ok, dt in results if kind in ("chat", "stream", "n2", "embeddings"))

    def pct(v, p):
        return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else None

    summary = {
        "duration_s": round(wall, 1), "clients": a.clients, "parallel": a.parallel, "threads": a.threads,
        "warmup_requests": warm, "requests": len(results),
        "served_ok": sum(ok for _, _, ok, _ in results),
        "5xx": sum(b["5xx"] for b in by_kind.values()),
        "failed": sum(b["failed"] for b in by_kind.values()),
        "by_kind": {k: {"n": b["n"], "failed": b["failed"], "5xx": b["5xx"],
                        "p50_s": round(statistics.median(b["lat"]), 3)} for k, b in sorted(by_kind.items())},
        "latency_p50_s": round(pct(lat, 50), 3) if lat else None,
        "latency_p95_s": round(pct(lat, 95), 3) if lat else None,
        "rss_kb_start": rss0, "rss_kb_end": rss1, "rss_growth": round(rss1 / rss0 - 1, 4),
        "rss_kb_during": rss_series, "rss_parts_kb_start": rss0_parts, "rss_parts_kb_end": rss1_parts,
        **({"rss_kb_start_trimmed": rss0_trim, "rss_kb_end_trimmed": rss1_trim,
            "rss_growth_trimmed": round(rss1_trim / rss0_trim - 1, 4)} if a.probe_trim else {}),
        "fds_start": fds0, "fds_end": fds1, "health_after": health,
        "shutdown_rc": rc, "shutdown_s": round(exit_s, 2), "inflight_at_sigterm": inflight_out,
        "server_said_stopped": any("server stopped" in line for line in srv.err),
    }
    if summary["5xx"]:
        problems.append(f"{summary['5xx']} responses were 5xx")
    if summary["failed"]:
        problems.append(f"{summary['failed']} requests failed their check: "
                        + ", ".join(f"{k} {b['failed']}" for k, b in by_kind.items() if b["failed"]))
    if summary["rss_growth"] >= a.max_rss_growth:
        problems.append(f"RSS grew {100 * summary['rss_growth']:.1f}%")
    if fds1 != fds0:
        problems.append(f"open descriptors {fds0} -> {fds1}")
    if health != 200:
        problems.append(f"/health answered {health}")
    if rc != 0 or not summary["server_said_stopped"]:
        problems.append(f"shutdown: exit {rc}")
    if exit_s > 20:
        problems.append(f"shutdown took {exit_s:.1f} s")
    summary["problems"] = problems
    text = json.dumps(summary, indent=1)
    print(text)
    if a.out:
        open(a.out, "w").write(text + "\n")
    if rc != 0:  # what the server said last (a sanitizer's report, an error)
        print("".join(srv.err[-60:]), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
