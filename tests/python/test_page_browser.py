"""The web page at / (src/server/page.cpp) in a real browser: headless Chromium driven by Playwright.

kvlens serve on the project's reasoning model; the page is opened, a question typed and sent as a person
would, and what the page shows once the stream ends is compared with the API's answer to the same greedy
request: the answer text, the thinking block, the token count, the scores. Skipped, with the reason, when
Playwright or Chromium is missing (scripts/install_deps.sh installs both: Debian's chromium, PyPI's playwright,
which drives it through executable_path, no browser download). Writes a screenshot to $KVLENS_SCREENSHOT
(default page.png in the working directory: the build directory under ctest); the committed
docs/screenshots/page.png is regenerated with

    KVLENS_SCREENSHOT=$PWD/docs/screenshots/page.png ctest --test-dir build -R python_browser_page

Bounded: every wait in the page is at most 20 s and ctest stops the file at 60 s; each server is stopped by the
test (SIGTERM), and dies with the test's process should that be killed first.
"""
import ctypes
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                 "(pip install -r tests/python/requirements.txt)")

BIN = os.environ["KVLENS_BIN"]
MODEL = os.environ["KVLENS_REASONER_MODEL"]
ROUTER = os.environ["KVLENS_ROUTER"]
CHROMIUM = os.environ.get("KVLENS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = os.environ.get("KVLENS_SCREENSHOT") or os.path.abspath("page.png")
QUESTION = "What is 347+285?"
WAIT_MS = 20000  # each wait in the page; the whole file runs in a few seconds

if not CHROMIUM:
    pytest.skip("no chromium executable (Debian: apt-get install chromium; or set KVLENS_CHROMIUM)",
                allow_module_level=True)


def die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no server outlives the test


def start_server(*extra):
    p = subprocess.Popen([BIN, "serve", "-m", MODEL, "--port", "0", "-t", "2", "--parallel", "1", "--ctx", "512",
                          "--router", ROUTER, "--alias", "reasoner", *extra], stderr=subprocess.PIPE, text=True,
                         preexec_fn=die_with_parent)
    line = p.stderr.readline()
    m = re.search(r"http://[\d.]+:(\d+)", line)
    if not m:
        p.kill()
        p.wait()
        pytest.fail(f"no listening line: {line!r}")
    return p, f"http://127.0.0.1:{m.group(1)}"


def stop_server(p):
    p.send_signal(signal.SIGTERM)
    try:
        assert p.wait(timeout=15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def url():
    p, u = start_server()
    yield u
    stop_server(p)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as pw:
        # --no-sandbox: the tests may run as root (containers), where Chromium's sandbox refuses to start.
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 900, "height": 700}, device_scale_factor=1)
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.errors = []  # uncaught exceptions and console errors: the page must have none
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: pg.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    pg.on("response", lambda r: pg.errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    yield pg
    ctx.close()


def api_chat(url, body, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def record_updates(pg):
    """Counts the page's updates of the answer, the thinking and the metadata line while it streams."""
    pg.evaluate("""() => {
      // Every assignment of textContent replaces the element's text node: one record each, with the text.
      window.seen = {think: 0, answer: 0, meta: []};
      const watch = (id, f) => new MutationObserver(rs => rs.forEach(r => r.addedNodes.forEach(f)))
          .observe($(id), {childList: true});
      watch('think', n => window.seen.think++);
      watch('answer', n => window.seen.answer++);
      watch('meta', n => window.seen.meta.push(n.textContent));
    }""")


def ask(pg, question, mode, arg=None):
    pg.fill("#q", question)
    pg.select_option("#mode", mode)  # budget and deer: shows the number input with its default
    if arg is not None:
        pg.fill("#arg", arg)
    record_updates(pg)
    pg.click("#go")
    # The last chunk carries kvlens.stop: the page then says "...; stop: end_of_turn".
    pg.wait_for_function("() => /stop: /.test(document.getElementById('meta').textContent)")
    return pg.evaluate("() => window.seen")


def shown_scores(pg):
    rows = pg.eval_on_selector_all("#scores tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    return {r[0]: r[1] for r in rows}


def test_page_streams_answer_thinking_and_scores(url, page):
    t0 = time.monotonic()
    page.goto(url + "/")
    # The model line comes from GET /v1/models; "auto" is enabled because the server has a router.
    page.wait_for_function("() => document.getElementById('model').textContent.length > 0")
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        info = json.load(r)["data"][0]["kvlens"]
    assert page.text_content("#model") == f"reasoner ({info['arch']}, {info['n_layer']} layers)"
    assert not page.eval_on_selector("#mode option[value=auto]", "o => o.disabled")

    # The page's request (stream, scores every 8 tokens), without streaming, through the API.
    ref = api_chat(url, {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 256,
                         "think": "on"})
    msg, k = ref["choices"][0]["message"], ref["kvlens"]
    assert msg["content"] == "Answer: 632" and msg["reasoning_content"]

    seen = ask(page, QUESTION, "on")
    assert page.text_content("#answer") == msg["content"]
    assert page.text_content("#think") == msg["reasoning_content"]
    assert page.text_content("#meta") == f"{k['n_generated']} tokens generated; stop: {k['stop']}"
    # Streamed, not dropped in at the end: the thinking grew in several steps, and the live scores
    # (kvlens.scores_every = 8) were shown before the end.
    assert seen["think"] >= 3 and seen["answer"] >= 1
    live = [m for m in seen["meta"] if m.endswith("so far")]
    assert len(live) >= 2 and live[0] == "8 tokens generated so far", seen["meta"]

    # The scores table: KV-CoE R and C (token axis, layer axis, hidden states) and inv_ppl, as numbers equal
    # to the API's to the 4 decimals shown.
    shown = shown_scores(page)
    expected = {n: v for n, v in k["scores"].items() if re.search(r"coe_[rc]$|^p_correct|inv_ppl", n)}
    assert set(shown) == set(expected) and "kv_coe_r" in shown and "kv_coe_c" in shown and "inv_ppl" in shown
    for n, v in expected.items():
        assert math.isfinite(float(shown[n])), (n, shown[n])
        assert shown[n] == f"{v:.4f}" or abs(float(shown[n]) - v) <= 1e-4, (n, shown[n], v)

    os.makedirs(os.path.dirname(SCREENSHOT) or ".", exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert os.path.getsize(SCREENSHOT) > 1000
    assert page.errors == []
    assert time.monotonic() - t0 < 40


def test_page_auto_shows_the_router(url, page):
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('model').textContent.length > 0")
    ref = api_chat(url, {"messages": [{"role": "user", "content": "What is 12+7?"}], "temperature": 0,
                         "max_tokens": 256, "think": "auto"})
    t = ref["kvlens"]["think"]
    ask(page, "What is 12+7?", "auto")
    assert page.text_content("#answer") == ref["choices"][0]["message"]["content"]
    meta = page.text_content("#meta")
    assert f"; router d={t['prompt_score']:.1f} -> {t['initial']}" in meta, meta
    if t["switch_at"] >= 0:
        assert f"switched to {t['final']} after {t['switch_at']} tokens" in meta
    else:
        assert meta.endswith(", no switch")
    assert page.errors == []


@pytest.mark.parametrize("mode,arg", [("budget", "8"), ("deer", "0.95")])
def test_page_budget_and_deer_exits(url, page, mode, arg):
    """The page's number beside the menu becomes budget:N / deer:T; the meta line says how thinking ended."""
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('model').textContent.length > 0")
    ref = api_chat(url, {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
                         "max_tokens": 256, "think": f"{mode}:{arg}"})
    k = ref["kvlens"]
    t = k["think"]
    assert t["mode"] == f"{mode}:{arg}" and t["exit"] == mode, t  # both exits fire on this question
    assert not page.is_visible("#arg")
    ask(page, QUESTION, mode, arg)
    assert page.is_visible("#arg")
    assert page.text_content("#answer") == ref["choices"][0]["message"]["content"]
    assert page.text_content("#think") == ref["choices"][0]["message"].get("reasoning_content", "")
    meta = page.text_content("#meta")
    want = f"; {mode}:{arg}: think block closed by {mode} after {t['switch_at']} tokens"
    assert want in meta, meta
    if mode == "deer":
        c = k["cost"]
        assert c["n_trials"] >= 1 and meta.endswith(f", {c['n_trials']} trials ({c['n_trial_tokens']} tokens)")
    assert page.errors == []


def test_page_one_request_at_a_time_and_errors_shown(url, page):
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('model').textContent.length > 0")
    # A double click sends one request: the button is disabled while the answer streams (two streams into the
    # same elements would interleave their text).
    page.fill("#q", QUESTION)
    page.select_option("#mode", "on")
    # Counted at the network, not read off the button: on an idle machine the answer (~0.1 s) can be done and
    # the button enabled again before a check of its state runs.
    sent = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/v1/chat/completions") else None)
    page.dblclick("#go")
    page.wait_for_function("() => /stop: /.test(document.getElementById('meta').textContent)")
    page.wait_for_function("() => !document.getElementById('go').disabled")
    assert page.text_content("#answer") == "Answer: 632"
    assert len(sent) == 1, sent
    # A refused request: the API's message is shown, the button usable again.
    page.fill("#max", "0")
    page.click("#go")
    page.wait_for_function("() => /max_tokens/.test(document.getElementById('meta').textContent)")
    page.wait_for_function("() => !document.getElementById('go').disabled")
    assert page.text_content("#answer") == ""
    page.errors = [e for e in page.errors if "status of 400" not in e and not e.startswith("HTTP 400")]
    assert page.errors == []


def test_page_asks_for_the_api_key(page):
    key = "browser-test-key"
    p, u = start_server("--api-key", key)
    try:
        page.goto(u + "/")
        # GET /v1/models answers 401: the key row appears, the model line stays empty.
        page.wait_for_selector("#keyrow", state="visible")
        assert "needs an API key" in page.text_content("#meta")
        assert page.text_content("#model") == ""
        page.fill("#key", key)
        page.press("#key", "Enter")  # change event
        page.wait_for_function("() => document.getElementById('model').textContent.length > 0")
        ref = api_chat(u, {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 256,
                           "think": "off"}, key=key)
        ask(page, QUESTION, "off")
        assert page.text_content("#answer") == ref["choices"][0]["message"]["content"]
        assert page.text_content("#think") == ""
        # 401s are expected console errors here (failed resource loads); no uncaught exception.
        assert [e for e in page.errors if e.startswith("pageerror")] == []
    finally:
        stop_server(p)
    # The server gone: the page says so instead of failing silently.
    page.click("#go")
    page.wait_for_function("() => /request failed/.test(document.getElementById('meta').textContent)")
    assert not page.is_disabled("#go")
    assert [e for e in page.errors if e.startswith("pageerror")] == []
