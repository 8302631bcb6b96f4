"""kvlens serve's hardening over HTTP (issue 15, part 3): loopback by default, the API key (401), the body limit
(413), the request limits (400 naming the parameter), a bounded line of waiting requests (503 with
Retry-After) and the per-request timeout (finish_reason "length", kvlens.timeout).

Each server is started on a free port and stopped with SIGTERM; every test is bounded in time (< 30 s)."""
import concurrent.futures
import http.client
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest

BIN = os.environ["KVLENS_BIN"]
REASONER = os.environ["KVLENS_REASONER_MODEL"]
# A tiny model with random weights: it rarely ends its turn, so a long max_tokens makes a slow request.
TINY = os.path.join(os.environ["KVLENS_TEST_MODELS_DIR"], "tiny-llama.gguf")
KEY = "sk-kvlens-test-0123456789"


class Server:
    def __init__(self, args, env=None):
        self.p = subprocess.Popen([BIN, "serve", "--port", "0", "-t", "1"] + args, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, **(env or {})})
        self.line = self.p.stderr.readline()
        m = re.search(r"http://([\d.]+):(\d+)", self.line)
        assert m, f"no listening line: {self.line!r}"
        self.host, self.port = m.group(1), int(m.group(2))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        assert self.p.wait(timeout=20) == 0
        assert "server stopped" in self.p.stderr.read()


def raw(url, path, body=None, method=None, key=None, timeout=30):
    """(status, headers, JSON or text) of one request, errors included."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = "Bearer " + key
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, text = r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        status, hdrs, text = e.code, e.headers, e.read().decode()
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text


def chat_body(max_tokens, **kw):
    return {"messages": [{"role": "user", "content": "What is 347+285?"}], "temperature": 0,
            "max_tokens": max_tokens, **kw}


@pytest.fixture(scope="module")
def keyed():
    # The key from the environment (KVLENS_API_KEY), a 4 KiB body limit, at most 8 messages.
    s = Server(["-m", REASONER, "--ctx", "512", "--max-body-bytes", "4096", "--max-messages", "8"],
               env={"KVLENS_API_KEY": KEY})
    yield s
    s.stop()


def test_loopback_by_default(keyed):
    assert keyed.host == "127.0.0.1" and "API key required" in keyed.line
    assert KEY not in keyed.line  # the key is never printed


def test_api_key(keyed):
    url = keyed.url
    # Open without a key: the health check and the page (which asks for the key itself).
    assert raw(url, "/health")[::2] == (200, {"status": "ok"})
    status, _, page = raw(url, "/")
    assert status == 200 and "Authorization" in page and 'type="password"' in page
    # Everything else: 401 in OpenAI's shape, without a key, with a wrong one, a near miss, another scheme.
    for key, path, body in [(None, "/v1/models", None), ("wrong", "/v1/models", None),
                            (KEY[:-1], "/v1/models", None), (KEY + "0", "/v1/models", None),
                            (None, "/v1/chat/completions", chat_body(5)), ("x", "/v1/embeddings", {"input": "a"}),
                            (None, "/v1/nothing", None),
                            (None, "/v1/chat/completions", b"x" * 100000)]:  # checked before the body is read
        status, hdrs, j = raw(url, path, body, key=key)
        assert status == 401, (key, path, j)
        assert j == {"error": {"message": j["error"]["message"], "type": "authentication_error", "param": None,
                               "code": "invalid_api_key"}}
        assert hdrs["WWW-Authenticate"] == "Bearer"
    status, hdrs, j = raw(url, "/v1/models", method="GET")
    assert "Authorization: Bearer" in j["error"]["message"]
    req = urllib.request.Request(url + "/v1/models", headers={"Authorization": "Basic " + KEY})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    # With the key: everything works; the scheme is case-insensitive.
    assert raw(url, "/v1/models", key=KEY)[0] == 200
    req = urllib.request.Request(url + "/v1/models", headers={"Authorization": "bearer " + KEY})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert raw(url, "/v1/nothing", key=KEY)[0] == 404


def test_openai_client_with_key(keyed):
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    r = good.chat.completions.create(model="x", messages=[{"role": "user", "content": "What is 12+34?"}],
                                     temperature=0, max_tokens=200, extra_body={"think": "on"})
    assert r.choices[0].message.content == "Answer: 46"
    assert len(good.embeddings.create(model="x", input=["12+34"]).data) == 1
    bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"


def test_body_limit(keyed):
    big = chat_body(5, messages=[{"role": "user", "content": "x" * 5000}])
    status, _, j = raw(keyed.url, "/v1/chat/completions", big, key=KEY)
    assert status == 413 and j["error"]["param"] == "body" and "--max-body-bytes" in j["error"]["message"]
    status, _, j = raw(keyed.url, "/v1/embeddings", {"input": ["y" * 3000, "z" * 3000]}, key=KEY)
    assert status == 413 and j["error"]["param"] == "body"
    # Just under the limit is served (and refused for what it says, not for its size).
    status, _, j = raw(keyed.url, "/v1/chat/completions",
                       chat_body(5, messages=[{"role": "user", "content": "1+" * 1500}]), key=KEY)
    assert status == 400 and j["error"]["param"] == "messages" and "context of 512" in j["error"]["message"]
    # The server is still fine.
    assert raw(keyed.url, "/v1/chat/completions", chat_body(5), key=KEY)[0] == 200


def test_request_limits(keyed):
    c = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "1"} for i in range(9)]
    for kw, param, says in [({"n": 9}, "n", "--max-n"),
                            ({"max_tokens": 512}, "max_tokens", "context of 512"),
                            ({"max_tokens": 100000}, "max_tokens", "context of 512"),
                            ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
                            ({"stop": "s" * 300}, "stop", "256"),
                            ({"messages": msgs}, "messages", "--max-messages"),
                            ({"extra_body": {"kvlens": {"scores_every": -1}}}, "kvlens.scores_every", "[0,")]:
        args = dict(model="x", messages=[{"role": "user", "content": "1+1"}], max_tokens=5)
        args.update(kw)
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(**args)
        body = e.value.body
        assert e.value.status_code == 400 and body["param"] == param and body["type"] == "invalid_request_error"
        assert body["message"].startswith(param + ": ") and says in body["message"], body
    # The bounds themselves are accepted: n = 8, 4 stop strings, max_tokens that fits the context.
    r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "1+1"}], max_tokens=2, n=8,
                                  stop=["a", "b", "c", "d"])
    assert len(r.choices) == 8
    r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "What is 12+34?"}],
                                  max_tokens=511, temperature=0, extra_body={"think": "on"})
    assert r.choices[0].message.content == "Answer: 46"


def read_first_event(conn):
    """Reads a streaming response's status and its first server-sent event."""
    resp = conn.getresponse()
    assert resp.status == 200
    buf = b""
    while b"\n\n" not in buf:
        chunk = resp.read1(4096)
        assert chunk, "the stream ended before its first event"
        buf += chunk
    return resp


def test_full_queue_answers_503(tmp_path):
    s = Server(["-m", TINY, "--ctx", "4096", "--parallel", "1", "--queue", "1", "--api-key", KEY])
    try:
        t0 = time.time()
        # A: a long streaming answer, computing once its first event arrives.
        a = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        a.request("POST", "/v1/chat/completions", json.dumps(chat_body(3000, stream=True)),
                  {"Content-Type": "application/json", "Authorization": "Bearer " + KEY})
        a_resp = read_first_event(a)
        # B: admitted, waits for A's slot.
        pool = concurrent.futures.ThreadPoolExecutor(1)
        b = pool.submit(raw, s.url, "/v1/chat/completions", chat_body(4), key=KEY)
        time.sleep(1.0)
        assert not b.done()
        # C (and an embedding): beyond parallel + queue, refused at once with Retry-After.
        for path, body in [("/v1/chat/completions", chat_body(4)),
                           ("/v1/chat/completions", chat_body(4, stream=True)),
                           ("/v1/embeddings", {"input": "hello"})]:
            t = time.time()
            status, hdrs, j = raw(s.url, path, body, key=KEY)
            assert status == 503, j
            assert time.time() - t < 2
            assert hdrs["Retry-After"] == "1"
            assert j["error"]["type"] == "server_error" and j["error"]["code"] == "overloaded"
            assert "--queue" in j["error"]["message"]
        # The official client sees the same (no retries asked for).
        c = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert e.value.status_code == 503
        # A's client goes away: its sequence is freed, B gets its turn, then the line has room again.
        a_resp.close()
        a.close()
        status, _, j = b.result(timeout=25)
        assert status == 200 and j["usage"]["completion_tokens"] == 4
        assert raw(s.url, "/v1/chat/completions", chat_body(3), key=KEY)[0] == 200
        pool.shutdown()
        assert time.time() - t0 < 30
    finally:
        s.stop()


def test_timeout_cuts_the_answer():
    s = Server(["-m", TINY, "--ctx", "4096", "--timeout-s", "0.5"])
    try:
        t = time.time()
        status, _, j = raw(s.url, "/v1/chat/completions", chat_body(3000))
        assert status == 200 and time.time() - t < 10
        k = j["kvlens"]
        assert j["choices"][0]["finish_reason"] == "length"
        assert k["timeout"] is True and k["stop"] == "timeout"
        assert 0 < j["usage"]["completion_tokens"] == k["n_generated"] < 3000
        # Streaming ends the same way: the last chunk carries finish_reason length and the timeout.
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        chunks = list(c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=3000, temperature=0, stream=True))
        final = [x for x in chunks if x.choices and x.choices[0].finish_reason]
        assert len(final) == 1 and final[0].choices[0].finish_reason == "length"
        assert final[0].model_extra["kvlens"]["timeout"] is True
        # A short answer is not touched.
        status, _, j = raw(s.url, "/v1/chat/completions", chat_body(3))
        assert status == 200 and "timeout" not in j["kvlens"] and j["usage"]["completion_tokens"] == 3
    finally:
        s.stop()


def test_timeout_cuts_n_samples():
    # n > 1 (its own context, samples decoded together) stops on the timeout too: every sample with what it has.
    s = Server(["-m", TINY, "--ctx", "4096", "--timeout-s", "0.5"])
    try:
        t = time.time()
        status, _, j = raw(s.url, "/v1/chat/completions", chat_body(3000, n=2))
        assert status == 200 and time.time() - t < 10
        assert j["kvlens"]["timeout"] is True
        assert [c["finish_reason"] for c in j["choices"]] == ["length", "length"]
        assert all(c["kvlens"]["stop"] == "timeout" and 0 < c["kvlens"]["n_generated"] < 3000
                   for c in j["choices"])
    finally:
        s.stop()


def test_sigterm_drains_within_the_grace_period():
    # Three long completions in flight (shared batch, streamed, n = 2): SIGTERM lets them run for the grace
    # period, then each ends with what it has (200, finish_reason length, kvlens stop "shutdown") and the
    # server exits 0, instead of waiting for 3000 tokens each.
    s = Server(["-m", TINY, "--ctx", "4096", "--parallel", "2", "--shutdown-grace-s", "1"])
    out = {}

    def plain():
        out["plain"] = raw(s.url, "/v1/chat/completions", chat_body(3000), timeout=60)

    def n2():
        out["n2"] = raw(s.url, "/v1/chat/completions", chat_body(3000, n=2), timeout=60)

    def streamed():
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        out["stream"] = list(c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                                       max_tokens=3000, temperature=0, stream=True))

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        fs = [ex.submit(f) for f in (plain, n2, streamed)]
        time.sleep(1.5)
        t = time.time()
        s.p.send_signal(signal.SIGTERM)
        assert s.p.wait(timeout=20) == 0
        took = time.time() - t
        [f.result(timeout=30) for f in fs]
    assert took < 8, took  # 1 s of grace, then one token per sequence
    assert "server stopped" in s.p.stderr.read()
    status, _, j = out["plain"]
    assert status == 200 and j["choices"][0]["finish_reason"] == "length"
    assert j["kvlens"]["stop"] == "shutdown" and j["kvlens"]["shutdown"] is True
    assert 0 < j["kvlens"]["n_generated"] < 3000
    status, _, j = out["n2"]
    assert status == 200 and j["kvlens"]["shutdown"] is True
    assert all(c["finish_reason"] == "length" and c["kvlens"]["stop"] == "shutdown" for c in j["choices"])
    final = [x for x in out["stream"] if x.choices and x.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason == "length"
    assert final[0].model_extra["kvlens"]["stop"] == "shutdown"


def test_number_overflow_in_the_body_is_a_400(keyed):
    # nlohmann's parser throws out_of_range (not parse_error) for 1E750053830: once a 500, now the body's 400.
    status, _, j = raw(keyed.url, "/v1/chat/completions",
                       b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1E750053830}', key=KEY)
    assert status == 400 and j["error"]["param"] == "body", j
