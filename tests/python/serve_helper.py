"""`kvlens serve` started on a free loopback port for a test, and stopped with SIGTERM (clean exit checked)."""
import re
import signal
import subprocess


class Server:
    def __init__(self, bin_path, model, args):
        self.p = subprocess.Popen([bin_path, "serve", "-m", model, "--port", "0"] + args, stderr=subprocess.PIPE,
                                  text=True)
        line = self.p.stderr.readline()
        m = re.search(r"http://[\d.]+:(\d+)", line)
        assert m, f"no listening line: {line!r}"
        self.port = int(m.group(1))

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        assert self.p.wait(timeout=20) == 0
        assert "server stopped" in self.p.stderr.read()
