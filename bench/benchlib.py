"""Shared helpers of the bench/ comparison scripts (not part of kvlens): the machine, versions, medians,
child processes' peak RSS, model paths and the JSON record every script writes."""
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA_COMMIT = "80fb11ac73e66d89eae2c6a91d8a77428fa733ed"  # cmake/KvlensLlama.cmake
MODEL_NAMES = ("smollm2-135m", "qwen2.5-coder-0.5b")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def median(v):
    return statistics.median(v) if v else float("nan")


def ratio(a, b):
    return a / b if b else float("nan")


def percentile(v, q):
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not v:
        return float("nan")
    s = sorted(v)
    k = (len(s) - 1) * q / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def resolve_model(name_or_path):
    """A GGUF path as is, or a scripts/fetch_model.sh name (fetched / re-hashed; the last line is the path)."""
    if os.path.exists(name_or_path):
        return os.path.abspath(name_or_path)
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "fetch_model.sh"), name_or_path],
                         stdout=subprocess.PIPE, check=True, text=True).stdout
    return out.strip().splitlines()[-1]


def machine():
    info = {"platform": platform.platform(), "python": platform.python_version(), "nproc": os.cpu_count()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["mem_total_kb"] = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
        info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    try:
        info["affinity"] = sorted(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def versions(kvlens_bin=None):
    v = {"llama_cpp_pinned_commit": LLAMA_COMMIT}
    try:
        v["kvlens_git"] = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                         stdout=subprocess.PIPE, text=True).stdout.strip()
    except OSError:
        pass
    if kvlens_bin and os.path.exists(kvlens_bin):
        r = subprocess.run([kvlens_bin, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        v["kvlens_version"] = r.stdout.strip()
    return v


class Child:
    """A long-running child (a server) whose peak RSS is read from /proc/PID/status (VmHWM) while it runs,
    and from wait4's rusage when it exits."""

    def __init__(self, cmd, **kw):
        self.cmd = cmd
        self.p = subprocess.Popen(cmd, **kw)
        self.rusage_maxrss_kb = None

    def vmhwm_kb(self):
        try:
            for line in open(f"/proc/{self.p.pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self, sig=15, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            _, status, ru = os.wait4(self.p.pid, 0)
            self.p.returncode = os.waitstatus_to_exitcode(status)
            self.rusage_maxrss_kb = ru.ru_maxrss
        except ChildProcessError:
            pass
        return self.p.returncode


def time_peak(cmd, env=None, cwd=None):
    """Runs cmd; returns (rc, stdout, stderr, wall seconds, peak RSS kB from wait4)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    out, err = [], []
    t1 = threading.Thread(target=lambda: out.append(p.stdout.read()))
    t2 = threading.Thread(target=lambda: err.append(p.stderr.read()))
    t1.start(), t2.start()
    _, status, ru = os.wait4(p.pid, 0)
    t1.join(), t2.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, out[0], err[0], time.monotonic() - t0, ru.ru_maxrss


def write_record(path, record):
    record.setdefault("argv", sys.argv)
    record.setdefault("finished_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
        log(f"wrote {path}")


def default_bin(dirs, name):
    """First existing dirs[i]/name; else dirs[0]/name (the error comes when it is run)."""
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    return os.path.join(dirs[0], name)


def parse_json_lines(text):
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def slug(s):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)
