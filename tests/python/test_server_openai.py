"""kvlens serve against the official OpenAI Python client, an independent implementation of the protocol.

One server on the project's reasoning model (a Qwen3-architecture hybrid model) with a router, on a free
port. Answers are compared with the other front end (kvlens generate / kvlens embed on the same model)."""
import concurrent.futures
import json
import math
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest

BIN = os.environ["KVLENS_BIN"]
MODEL = os.environ["KVLENS_REASONER_MODEL"]
ROUTER = os.environ["KVLENS_ROUTER"]
QUESTION = "What is 347+285?"


@pytest.fixture(scope="module")
def url():
    p = subprocess.Popen([BIN, "serve", "-m", MODEL, "--port", "0", "-t", "2", "--parallel", "2", "--ctx", "512",
                          "--router", ROUTER, "--alias", "reasoner"], stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    m = re.search(r"http://[\d.]+:(\d+)", line)
    assert m, f"no listening line: {line!r}"
    yield f"http://127.0.0.1:{m.group(1)}"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0
    assert "server stopped" in p.stderr.read()


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, **kw):
    args = dict(model="reasoner", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=300)
    args.update(kw)
    return client.chat.completions.create(**args)


def cli_generate(question, think):
    out = subprocess.run([BIN, "generate", "-m", MODEL, "-p", question, "--think", think, "-n", "300", "-t", "2"],
                         capture_output=True, text=True, check=True)
    return out.stdout.rstrip("\n")


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["reasoner"]
    info = models[0].model_extra["kvlens"]
    assert info["arch"] == "qwen3" and info["thinking"] and info["router"]


def test_chat_equals_kvlens_generate(client):
    r = ask(client, extra_body={"think": "on"})
    msg = r.choices[0].message
    text = cli_generate(QUESTION, "on")  # "<think>\n...\n</think>\n\nAnswer: 632"
    assert text.startswith("<think>") and "</think>" in text
    assert msg.content == text.split("</think>", 1)[1].strip()
    assert msg.model_extra["reasoning_content"] == text.split("</think>", 1)[0][len("<think>"):].lstrip()
    assert msg.content == "Answer: 632"
    assert r.choices[0].finish_reason == "stop"
    k = r.model_extra["kvlens"]
    assert k["stop"] == "end_of_turn" and k["think"] == {"mode": "on"}
    assert r.usage.completion_tokens == k["n_generated"] and r.usage.prompt_tokens == k["n_prompt"]
    assert len(k["scores"]) == 26 and all(math.isfinite(v) for v in k["scores"].values())
    # Fast mode: the empty think block is in the prompt, the answer has no reasoning.
    f = ask(client, extra_body={"think": "off"}).choices[0].message
    assert f.content == cli_generate(QUESTION, "off").strip()
    assert not (f.model_extra or {}).get("reasoning_content")


def test_stream_equals_non_stream(client):
    full = ask(client, extra_body={"think": "on"})
    chunks = list(ask(client, extra_body={"think": "on"}, stream=True, stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert content == full.choices[0].message.content
    assert reasoning == full.choices[0].message.model_extra["reasoning_content"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # really streamed
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert finals[0].model_extra["kvlens"]["scores"] == full.model_extra["kvlens"]["scores"]
    assert chunks[-1].usage.model_dump() == full.usage.model_dump() and not chunks[-1].choices


def test_streaming_scores(client):
    # Streaming KV-CoE: every 8 tokens a chunk carries the scores so far; those at k tokens are the scores of
    # the same answer cut at k tokens.
    chunks = list(ask(client, extra_body={"think": "on", "kvlens": {"scores_every": 8}}, stream=True))
    partial = [c.model_extra["kvlens"] for c in chunks
               if (c.model_extra or {}).get("kvlens") and c.choices and not c.choices[0].finish_reason]
    assert len(partial) >= 3
    assert [p["n_generated"] for p in partial] == list(range(8, 8 * len(partial) + 1, 8))
    for p in partial[:3]:
        cut = ask(client, max_tokens=p["n_generated"], extra_body={"think": "on"})
        assert cut.usage.completion_tokens == p["n_generated"]
        assert p["scores"] == cut.model_extra["kvlens"]["scores"]
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0].model_extra["kvlens"]
    assert final["scores"] == ask(client, extra_body={"think": "on"}).model_extra["kvlens"]["scores"]


def test_stop_string_and_length(client):
    full = ask(client, extra_body={"think": "on"})
    r = ask(client, extra_body={"think": "on"}, stop=["=632"])
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and r.model_extra["kvlens"]["stop"] == "stop_string"
    said = (m.model_extra.get("reasoning_content") or "") + (m.content or "")
    assert "=632" not in said and full.choices[0].message.model_extra["reasoning_content"].startswith(said)
    s = list(ask(client, extra_body={"think": "on"}, stop=["=632"], stream=True))
    streamed = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in s if c.choices)
    assert streamed == said
    # Several stop strings: the earliest occurrence cuts, whatever the order they are given in.
    first = full.choices[0].message.model_extra["reasoning_content"]
    r2 = ask(client, extra_body={"think": "on"}, stop=["=632", " c1"])
    assert r2.choices[0].message.model_extra["reasoning_content"] == first[:first.index(" c1")]
    r = ask(client, max_tokens=5, extra_body={"think": "on"})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_n_samples_and_selection(client):
    # n samples decoded together, each a choice with its own scores; majority vote picks one.
    r = ask(client, n=4, temperature=0.8, seed=11, extra_body={"think": "on", "kvlens": {"select": "majority"}})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    extracted = [c.model_extra["kvlens"]["extracted"] for c in r.choices]
    sel = r.model_extra["kvlens"]["selection"]
    assert sel["strategy"] == "majority" and sel["answer"] == extracted[sel["index"]]
    assert sel["votes"] == extracted.count(sel["answer"]) == max(extracted.count(x) for x in extracted if x)
    assert r.usage.completion_tokens == sum(c.model_extra["kvlens"]["n_generated"] for c in r.choices)
    assert all(c.message.content.startswith("Answer: ") for c in r.choices if c.finish_reason == "stop")
    # best-of-N by a score: the chosen sample has the highest one.
    b = ask(client, n=3, temperature=0.8, seed=5, extra_body={"think": "on", "kvlens": {"select": "best",
                                                                                      "score": "kv_coe_r"}})
    s = [c.model_extra["kvlens"]["scores"]["kv_coe_r"] for c in b.choices]
    assert b.model_extra["kvlens"]["selection"]["index"] == s.index(max(s))
    # Greedy samples are all the same answer as n = 1.
    g = ask(client, n=2, extra_body={"think": "on"})
    one = ask(client, extra_body={"think": "on"})
    assert [c.message.content for c in g.choices] == [one.choices[0].message.content] * 2


def test_think_auto(client):
    for q in (QUESTION, "What is 12+34?", "What is 5031-2784+9163?"):
        msgs = [{"role": "user", "content": q}]
        r = ask(client, messages=msgs, extra_body={"think": "auto"})
        t = r.model_extra["kvlens"]["think"]
        assert t["mode"] == "auto" and t["initial"] in ("fast", "slow") and isinstance(t["prompt_score"], float)
        assert r.usage.completion_tokens == r.model_extra["kvlens"]["n_generated"] > 0
        chunks = list(ask(client, messages=msgs, extra_body={"think": "auto"}, stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                            for c in chunks if c.choices)
        assert content == r.choices[0].message.content
        assert reasoning == (r.choices[0].message.model_extra.get("reasoning_content") or "")
        if t["initial"] == "slow":  # streamed while thinking, not in one piece at the end
            assert len([c for c in chunks if c.choices and c.choices[0].delta.model_extra.get("reasoning_content")]) > 2


def cli_route_log(question, think, tmp_path):
    log = tmp_path / "route.jsonl"
    subprocess.run([BIN, "generate", "-m", MODEL, "-p", question, "--think", think, "-n", "300", "-t", "2",
                    "--route-log", str(log)], capture_output=True, text=True, check=True)
    return json.loads(log.read_text().splitlines()[-1])


def test_think_budget_and_deer_name_the_policy_and_count_every_token(client, tmp_path):
    on = ask(client, extra_body={"think": "on"})
    c = on.model_extra["kvlens"]["cost"]
    assert c["n_think_tokens"] + c["n_answer_tokens"] == on.usage.completion_tokens and c["n_trial_tokens"] == 0
    assert c["wall_ms"] > 0
    # llama-server's reasoning_budget N is kvlens' budget:N, and the same as kvlens generate.
    for body in ({"think": "budget:6"}, {"reasoning_budget": 6},
                 {"reasoning_budget": 6, "chat_template_kwargs": {"enable_thinking": True}}):
        r = ask(client, extra_body=body)
        k = r.model_extra["kvlens"]
        assert k["think"]["mode"] == "budget:6" and k["think"]["exit"] == "budget", body
        assert k["cost"]["n_think_tokens"] == 6 and k["cost"]["n_trial_tokens"] == 0
        log = cli_route_log(QUESTION, "budget:6", tmp_path)
        assert r.choices[0].message.content == log["answer"].strip()
        assert k["cost"]["n_decode_calls"] == log["cost"]["n_decode_calls"] == 1 + (log["n_sampled"] - 1) + 1
        assert r.usage.completion_tokens == k["n_generated"] == log["n_generated"]
    # DEER: a threshold of 0 exits at the first line break; above 1 never, and the answer is thinking's.
    d0 = ask(client, extra_body={"think": "deer:0"}).model_extra["kvlens"]
    assert d0["think"]["mode"] == "deer:0" and d0["think"]["exit"] == "deer" and d0["cost"]["n_trials"] == 1
    assert d0["n_generated"] == d0["think"]["n_sampled"] + d0["think"]["n_switch_tokens"] + d0["cost"]["n_trial_tokens"]
    d2 = ask(client, extra_body={"think": "deer:2"})
    k2 = d2.model_extra["kvlens"]
    assert k2["think"]["exit"] == "model" and k2["cost"]["n_trial_tokens"] > k2["cost"]["n_trials"] > 0
    assert d2.choices[0].message.content == on.choices[0].message.content
    assert d2.usage.completion_tokens == on.usage.completion_tokens + k2["cost"]["n_trial_tokens"]
    assert ask(client, extra_body={"think": "deer"}).model_extra["kvlens"]["think"]["mode"] == "deer:0.95"
    # enable_thinking false and reasoning_budget 0 are fast mode; -1 is unlimited (the default: thinking).
    for body in ({"chat_template_kwargs": {"enable_thinking": False}}, {"reasoning_budget": 0}):
        r = ask(client, extra_body=body)
        assert r.model_extra["kvlens"]["think"] == {"mode": "off"}, body
        assert not (r.choices[0].message.model_extra or {}).get("reasoning_content")
    r = ask(client, extra_body={"reasoning_budget": -1, "chat_template_kwargs": {"enable_thinking": True}})
    assert r.model_extra["kvlens"]["think"] == {"mode": "on"}
    streamed = list(ask(client, extra_body={"think": "budget:6"}, stream=True))
    assert streamed[-1].model_extra["kvlens"]["think"]["mode"] == "budget:6"


def test_think_policy_refusals_name_the_parameter(client):
    for body, param in (({"think": "budget:0"}, "think"), ({"think": "budget:x"}, "think"),
                        ({"think": "deer:-1"}, "think"), ({"think": "slow"}, "think"), ({"think": 3}, "think"),
                        ({"reasoning_budget": -2}, "reasoning_budget"), ({"reasoning_budget": 1.5}, "reasoning_budget"),
                        ({"reasoning_budget": "64"}, "reasoning_budget"),
                        ({"reasoning_budget": 8, "chat_template_kwargs": {"enable_thinking": False}},
                         "reasoning_budget"),
                        ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "chat_template_kwargs.enable_thinking"),
                        ({"think": "budget:8", "n": 2}, "think"), ({"reasoning_budget": 8, "n": 2}, "reasoning_budget")):
        with pytest.raises(openai.BadRequestError) as e:
            ask(client, extra_body=body)
        assert e.value.status_code == 400 and e.value.body["param"] == param, (body, e.value.body)
        assert e.value.body["message"].startswith(param + ": "), e.value.body


def test_embeddings_equal_kvlens_embed(client, tmp_path):
    texts = ["12+34", "What is 347+285?", "hello world"]
    got = client.embeddings.create(model="reasoner", input=texts)  # the client asks for base64
    floats = client.embeddings.create(model="reasoner", input=texts, encoding_format="float")
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    subprocess.run([BIN, "embed", "-m", MODEL, "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "e.jsonl"),
                    "-t", "2"], check=True, capture_output=True)
    want = [json.loads(line)["embedding"] for line in open(tmp_path / "e.jsonl")]
    assert len(got.data) == 3 and [d.index for d in got.data] == [0, 1, 2]
    for d, f, w in zip(got.data, floats.data, want):
        assert np.array_equal(np.array(d.embedding, np.float32), np.array(f.embedding, np.float32))
        np.testing.assert_allclose(d.embedding, w, rtol=0, atol=1e-6)
    assert got.usage.prompt_tokens > 0


def test_errors(client):
    for kw, param in [({"temperature": 3}, "temperature"), ({"n": 0}, "n"),
                      ({"extra_body": {"think": "sometimes"}}, "think")]:
        with pytest.raises(openai.BadRequestError) as e:
            ask(client, **kw)
        assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, messages=[{"role": "user", "content": "1+" * 600}])
    assert "context of 512" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="reasoner", input=["fine", ""])
    assert e.value.body["param"] == "input[1]"


def raw(url, path, body=None, method=None):
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_raw_http(url):
    assert raw(url, "/health") == (200, '{"status":"ok"}')
    status, page = raw(url, "/")
    assert status == 200 and "<html" in page and "/v1/chat/completions" in page
    status, body = raw(url, "/v1/chat/completions", b'{"messages": [')
    assert status == 400 and json.loads(body)["error"]["message"].startswith("request body: invalid JSON")
    status, body = raw(url, "/v1/chat/completions", b'[1, 2]')
    assert status == 400 and json.loads(body)["error"]["param"] == "body"
    status, body = raw(url, "/v1/nothing")
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"


def test_page_script_parses(url, tmp_path):
    # The web page's script, checked by node's parser (no browser here).
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's script is not syntax-checked")
    page = raw(url, "/")[1]
    script = page[page.index("<script>") + 8:page.index("</script>")]
    (tmp_path / "page.js").write_text(script)
    subprocess.run([node, "--check", str(tmp_path / "page.js")], check=True)


def test_concurrent_requests(client):
    one = ask(client, extra_body={"think": "on"})
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        rs = list(pool.map(lambda _: ask(client, extra_body={"think": "on"}), range(5)))
    assert all(r.choices[0].message.content == one.choices[0].message.content for r in rs)
    # Decoded together in one batch: the same tokens, scores within float tolerance (test_server_batching.py).
    for r in rs:
        for k, v in one.model_extra["kvlens"]["scores"].items():
            x = r.model_extra["kvlens"]["scores"][k]
            inv = k.startswith("inv_")  # 1/x of a near-zero x: compare x
            assert (1 / x if inv else x) == pytest.approx(1 / v if inv else v, rel=1e-3, abs=1e-3), k
    assert len({r.id for r in rs} | {one.id}) == 6
