#!/usr/bin/env python3
"""`kvlens serve` (scores on: every response carries kvlens.scores) vs llama.cpp's `llama-server` from the same
pinned tree, on loopback (issue #14 part 3).

For each model, each round and each concurrency level C (1, 4, 8), both servers are started in turn (order
alternating per round) with C slots decoded together (kvlens --parallel C --ctx X; llama-server -np C -c C*X
-kvu, prompt cache off, so that repeated prompts are computed again as kvlens does), the same threads, batch
and flash-attention setting; after one warm-up request, C client threads send --requests chat
completions each (every prompt at least once per phase; fixed prompts, temperature 0, fixed max_tokens), and
the phase's wall time gives
  aggregate tokens/s = sum of usage.completion_tokens / wall time
  latency p50 / p95 = per request, send to last byte
  peak RSS = the server's VmHWM when the phase ends (it is started fresh for each phase).
Greedy check: every prompt's answer at C > 1 must equal the same server's answer at C = 1 (tokens: the text),
reported per server (a difference is a failure, exit status 1). kvlens vs llama-server text equality is
reported too, for information (chat templates may differ).

  python3 bench/compare_server.py --models smollm2-135m,qwen2.5-coder-0.5b -t 2 --reps 3 \\
      --out runs/bench/serve-vs-llama-server.json
  python3 bench/compare_server.py --quick             (smoke)
"""
import argparse
import http.client
import json
import os
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def load_prompts(n, prompt_set="arith"):
    """arith: short questions, short answers (prefill-heavy); gsm8k-boxed: GSM8K questions with Qwen's
    step-by-step prompt, answers that run to max_tokens (decode-heavy)."""
    qs = []
    path, suffix = {
        "arith": ("arith.jsonl", " Give the final answer on the last line in the format \"Answer: N\"."),
        "gsm8k-boxed": ("gsm8k_test.jsonl",
                        "\nPlease reason step by step, and put your final answer within \\boxed{}."),
    }[prompt_set]
    with open(os.path.join(bl.ROOT, "data", path)) as f:
        for line in f:
            qs.append(json.loads(line)["question"] + suffix)
            if len(qs) == n:
                break
    return qs


def post(port, body, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.monotonic()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    dt = time.monotonic() - t0
    c.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    return json.loads(data), dt


def wait_health(port, child, timeout=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if child.p.poll() is not None:
            raise SystemExit(f"server exited ({child.p.returncode}): {' '.join(child.cmd)}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not healthy after {timeout}s: {' '.join(child.cmd)}")


def start_server(kind, args, model, slots):
    log = open(os.path.join(args.log_dir, f"{kind}-{slots}.log"), "a")
    if kind.startswith("kvlens"):  # kvlens, or kvlens-bi: with --batch-invariant
        cmd = [args.kvlens, "serve", "-m", model, "-t", str(args.threads), "--parallel", str(slots),
               "--ctx", str(args.ctx), "--batch", str(args.batch), "--flash-attn", args.flash_attn,
               "--kv-source", args.kv_source, "--queue", "256", "--port", "0"]
        cmd += ["--batch-invariant"] if kind == "kvlens-bi" else []
        child = bl.Child(cmd, stderr=__import__("subprocess").PIPE, stdout=log, text=True)
        line = child.p.stderr.readline()
        m = re.search(r"http://[\d.]+:(\d+)", line)
        if not m:
            child.stop()
            raise SystemExit(f"kvlens serve did not start: {line!r}")
        port = int(m.group(1))
        threading.Thread(target=lambda: [log.write(x) for x in child.p.stderr], daemon=True).start()
    else:
        port = free_port()
        cmd = [args.llama_server, "-m", model, "-t", str(args.threads), "-tb", str(args.threads), "-np", str(slots),
               "-c", str(slots * args.ctx), "-b", str(args.batch), "-ub", str(args.batch), "-fa", args.flash_attn,
               "-kvu", "--no-cache-prompt", "-cram", "0", "--no-webui", "--host", "127.0.0.1",
               "--port", str(port)]
        child = bl.Child(cmd, stdout=log, stderr=log)
    wait_health(port, child)
    return child, port, cmd


def phase(kind, args, model, prompts, clients):
    child, port, cmd = start_server(kind, args, model, clients)
    try:
        base = {"temperature": 0, "max_tokens": args.max_tokens, "seed": 0}
        post(port, dict(base, messages=[{"role": "user", "content": prompts[0]}]))  # warm-up
        results, errors = [], []
        lock = threading.Lock()

        # Every phase asks every prompt at least once (the greedy check needs each at C = 1): max(P,
        # C x --requests) requests, prompt i % P, taken from a shared counter by the C client threads.
        n_total = max(len(prompts), clients * args.requests)
        counter = iter(range(n_total))

        def client(ci):
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                pi = i % len(prompts)
                try:
                    r, dt = post(port, dict(base, messages=[{"role": "user", "content": prompts[pi]}]))
                    row = {"prompt": pi, "latency_s": dt, "tokens": r["usage"]["completion_tokens"],
                           "text": r["choices"][0]["message"].get("content") or "",
                           "finish": r["choices"][0].get("finish_reason")}
                    if kind.startswith("kvlens"):
                        row["has_scores"] = bool(r.get("kvlens", {}).get("scores"))
                    with lock:
                        results.append(row)
                except Exception as e:  # noqa: BLE001 - reported, the phase fails
                    with lock:
                        errors.append(repr(e))

        th = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        t0 = time.monotonic()
        for t in th:
            t.start()
        for t in th:
            t.join()
        wall = time.monotonic() - t0
        hwm = child.vmhwm_kb()
    finally:
        child.stop()
    lat = [r["latency_s"] for r in results]
    toks = sum(r["tokens"] for r in results)
    return {"server": kind, "clients": clients, "cmd": cmd, "wall_s": wall, "tokens": toks,
            "agg_tps": toks / wall if wall else 0, "p50_s": bl.percentile(lat, 50), "p95_s": bl.percentile(lat, 95),
            "peak_rss_kb": hwm, "peak_rss_kb_wait4": child.rusage_maxrss_kb, "errors": errors,
            "scores_missing": sum(1 for r in results if r.get("has_scores") is False), "requests": results}


def one_model(args, name):
    model = bl.resolve_model(name)
    bl.log(f"== {name}: {model}")
    prompts = load_prompts(args.prompts, args.prompt_set)
    phases = []
    for r in range(args.reps):
        for c in args.clients:
            order = args.servers if (r + c) % 2 == 0 else args.servers[::-1]
            for kind in order:
                ph = phase(kind, args, model, prompts, c)
                ph["round"] = r
                phases.append(ph)
                bl.log(f"round {r} {kind:6s} C={c}: {ph['agg_tps']:.1f} tok/s, p50 {ph['p50_s']:.2f} s, "
                       f"p95 {ph['p95_s']:.2f} s, RSS {ph['peak_rss_kb'] / 1024:.0f} MB"
                       + (f", {len(ph['errors'])} errors" if ph["errors"] else ""))

    # Greedy check: answers at C > 1 equal the same server's answer alone (C = min clients).
    c0 = min(args.clients)
    ok = True
    check = {}
    for kind in args.servers:
        ref = {}
        for ph in phases:
            if ph["server"] == kind and ph["clients"] == c0:
                for q in ph["requests"]:
                    ref.setdefault(q["prompt"], q["text"])
        diffs = [(ph["clients"], q["prompt"]) for ph in phases if ph["server"] == kind
                 for q in ph["requests"] if q["prompt"] in ref and q["text"] != ref[q["prompt"]]]
        errs = sum(len(ph["errors"]) for ph in phases if ph["server"] == kind)
        check[kind] = {"answers_differing_from_alone": len(diffs), "examples": diffs[:10], "errors": errs}
        # Only the batch-invariant server promises unchanged answers; the default kernels (kvlens' and
        # llama-server's) round differently when rows share a batch, so theirs are reported, not required.
        ok = ok and not errs and not (kind == "kvlens-bi" and diffs)
    for kind in [k for k in args.servers if k.startswith("kvlens")]:
        missing = sum(ph["scores_missing"] for ph in phases if ph["server"] == kind)
        check[kind]["responses_without_scores"] = missing
        ok = ok and missing == 0
    kv_ref = {q["prompt"]: q["text"] for ph in phases if ph["server"] == "kvlens" for q in ph["requests"]}
    ll_ref = {q["prompt"]: q["text"] for ph in phases if ph["server"] == "llama" for q in ph["requests"]}
    check["kvlens_equals_llama_server_text"] = sum(1 for p in kv_ref if ll_ref.get(p) == kv_ref[p])
    check["prompts_compared"] = len(kv_ref)

    summary = {}
    print(f"\n{name} ({model}), threads {args.threads}, max_tokens {args.max_tokens}, {args.requests} requests "
          f"per client, {args.reps} rounds (medians over rounds)")
    print(f"{'clients':>7s} {'server':>12s} {'tok/s':>8s} {'p50 s':>7s} {'p95 s':>7s} {'RSS MB':>7s} "
          f"{'tok/s ratio':>11s} {'p95 ratio':>9s}")
    for c in args.clients:
        row = {}
        for kind in args.servers:
            phs = [p for p in phases if p["server"] == kind and p["clients"] == c]
            row[kind] = {"agg_tps": bl.median([p["agg_tps"] for p in phs]),
                         "p50_s": bl.median([p["p50_s"] for p in phs]),
                         "p95_s": bl.median([p["p95_s"] for p in phs]),
                         "peak_rss_kb": max((p["peak_rss_kb"] or 0) for p in phs)}
        # Ratios against llama-server; kvlens-bi's (batch-invariant) also against kvlens' default kernels.
        for kind, base in (("kvlens", "llama"), ("kvlens-bi", "llama"), ("kvlens-bi", "kvlens")):
            both = kind in row and base in row
            key = ("" if kind == "kvlens" else "bi_") + ("" if base == "llama" else "vs_kvlens_")
            row[key + "tps_ratio"] = bl.ratio(row[kind]["agg_tps"], row[base]["agg_tps"]) if both else float("nan")
            row[key + "p95_ratio"] = bl.ratio(row[kind]["p95_s"], row[base]["p95_s"]) if both else float("nan")
        summary[str(c)] = row
        for kind, label in (("kvlens", "kvlens"), ("kvlens-bi", "kvlens-bi"), ("llama", "llama-server")):
            if kind not in row:
                continue
            x = row[kind]
            key = {"kvlens": "", "kvlens-bi": "bi_"}.get(kind)
            extra = f" {row[key + 'tps_ratio']:11.3f} {row[key + 'p95_ratio']:9.3f}" if key is not None else ""
            print(f"{c:7d} {label:>12s} {x['agg_tps']:8.1f} {x['p50_s']:7.2f} {x['p95_s']:7.2f} "
                  f"{x['peak_rss_kb'] / 1024:7.0f}{extra}")
    print(f"greedy check: {json.dumps(check)}")
    if "kvlens-bi" in args.servers and "kvlens" in args.servers:
        print("kvlens-bi / kvlens tok/s: " + ", ".join(f"C={c} {summary[str(c)]['bi_vs_kvlens_tps_ratio']:.3f}"
                                                       for c in args.clients))
    print("targets (issue #14): tok/s ratio >= 0.9 at 8 clients with scores on; p95 within 1.2x; "
          "no answer changes with concurrency")
    return {"model_name": name, "model_path": model, "summary": summary, "check": check, "check_ok": ok,
            "phases": phases}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(bl.MODEL_NAMES))
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8", help="concurrency levels (the smallest is the greedy reference)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per phase (at least --prompts in all)")
    ap.add_argument("--prompts", type=int, default=8, help="distinct fixed prompts (the first of --prompt-set)")
    ap.add_argument("--prompt-set", default="arith", choices=["arith", "gsm8k-boxed"],
                    help="arith (short answers: prefill-heavy) or gsm8k-boxed (reasoning: decode-heavy)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512, help="tokens per slot")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--flash-attn", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--kv-source", default="cache", choices=["graph", "cache"])
    ap.add_argument("--reps", type=int, default=3, help="rounds (servers alternate within each)")
    ap.add_argument("--servers", default="kvlens,llama",
                    help="which servers: kvlens, kvlens-bi (kvlens serve --batch-invariant), llama (one alone: no "
                         "ratios; for smoke runs)")
    ap.add_argument("--kvlens", default=os.path.join(bl.ROOT, "build", "bin", "kvlens"))
    ap.add_argument("--llama-bin-dir", default=os.path.join(bl.ROOT, "build-bench", "llama.cpp", "bin"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--log-dir", default=None, help="server logs (default: next to --out, or /tmp)")
    ap.add_argument("--quick", action="store_true", help="smoke: SmolLM2, 1 thread, clients 1,2, 1 request, 8 tokens")
    args = ap.parse_args()
    if args.quick:
        args.models, args.threads, args.clients, args.requests = "smollm2-135m", 1, "1,2", 1
        args.max_tokens, args.prompts, args.reps, args.ctx = 8, 4, 1, 256
    elif args.out is None:
        args.out = os.path.join(bl.ROOT, "runs", "bench", "serve-vs-llama-server.json")
    args.clients = sorted(int(c) for c in args.clients.split(","))
    args.llama_server = os.path.join(args.llama_bin_dir, "llama-server")
    args.servers = args.servers.split(",")
    for b in [{"kvlens": args.kvlens, "kvlens-bi": args.kvlens, "llama": args.llama_server}[s] for s in args.servers]:
        if not os.path.exists(b):
            raise SystemExit(f"missing {b}: build it (bench/README.md)")
    args.log_dir = args.log_dir or (os.path.dirname(os.path.abspath(args.out)) if args.out else "/tmp")
    os.makedirs(args.log_dir, exist_ok=True)
    record = {"comparison": "kvlens serve vs llama-server", "machine": bl.machine(),
              "versions": bl.versions(args.kvlens),
              "binaries": {"kvlens": args.kvlens, "llama_server": args.llama_server},
              "settings": {k: getattr(args, k) for k in ("servers", "threads", "clients", "requests", "prompts", "prompt_set",
                                                         "max_tokens", "ctx", "batch", "flash_attn", "kv_source",
                                                         "reps", "quick")},
              "models": []}
    ok = True
    for name in args.models.split(","):
        m = one_model(args, name)
        ok = ok and m["check_ok"]
        record["models"].append(m)
    record["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    bl.write_record(args.out, record)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
