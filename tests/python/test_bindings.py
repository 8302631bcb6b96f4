"""The Python bindings against the other front ends on the same model: kvlens.kv == kvlens dump (.npz),
Api.chat == kvlens generate, streaming == non-streaming, Api.embeddings == kvlens embed; refusals raise
kvlens.Error (a ValueError) naming the parameter; calls release the GIL."""
import concurrent.futures
import json
import math
import os
import subprocess

import numpy as np
import pytest

import kvlens

BIN = os.environ["KVLENS_BIN"]
MODEL = os.environ["KVLENS_REASONER_MODEL"]
ROUTER = os.environ["KVLENS_ROUTER"]
TINY = os.path.join(os.environ["KVLENS_TEST_MODELS_DIR"], "tiny-qwen2.gguf")
TINY_Q8 = os.path.join(os.environ["KVLENS_TEST_MODELS_DIR"], "tiny-llama-q8_0.gguf")
QUESTION = "What is 347+285?"


@pytest.fixture(scope="module")
def model():
    return kvlens.Model(MODEL)


@pytest.fixture(scope="module")
def api(model):
    return kvlens.Api(model, router=ROUTER, parallel=2, threads=1)


def chat(api, **kw):
    req = {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 300}
    req.update(kw)
    return api.chat(req)


@pytest.mark.parametrize("path,text,source", [(MODEL, QUESTION, "graph"), (TINY, "Hello world, again", "graph"),
                                              (TINY, "Hello world, again", "cache")])
def test_kv_equals_kvlens_dump(tmp_path, path, text, source):
    m = kvlens.Model(path)
    got = kvlens.kv(m, text, hidden=True, threads=2, kv_source=source)
    subprocess.run([BIN, "dump", "-m", path, "-p", text, "-o", str(tmp_path / "d.npz"), "--hidden", "-t", "2",
                    "--kv-source", source], check=True, capture_output=True)
    want = np.load(tmp_path / "d.npz")
    info = m.info
    assert got["tokens"] == want["tokens"].tolist() == m.tokenize(text)
    assert got["k"].shape == (info["n_layer"], len(got["tokens"]), info["kv_width"])
    for key in ("k", "v", "hidden"):
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], want[key])


def test_chat_equals_kvlens_generate(api):
    r = chat(api, think="on")
    out = subprocess.run([BIN, "generate", "-m", MODEL, "-p", QUESTION, "--think", "on", "-n", "300", "-t", "2"],
                         capture_output=True, text=True, check=True).stdout.strip()
    msg = r["choices"][0]["message"]
    assert msg["content"] == out.split("</think>", 1)[1].strip() == "Answer: 632"
    assert msg["reasoning_content"] == out.split("</think>", 1)[0][len("<think>"):].lstrip()
    assert r["usage"]["completion_tokens"] == r["kvlens"]["n_generated"]
    assert set(r["kvlens"]["scores"]) >= {"kv_coe_r", "kv_coe_c", "hs_coe_r", "max_prob"}
    assert api.models()["data"][0]["kvlens"]["router"] is True


def test_token_coe_knobs(api):
    """The coe_* arguments configure kv_coe_* as generate's --coe-* flags do; a bad value names its argument."""
    model = kvlens.Model(MODEL)
    other = kvlens.Api(model, threads=1, coe_layers="all", coe_kv_part="kv_cat", coe_head_agg="flatten")
    a, b = chat(api, think="on")["kvlens"]["scores"], chat(other, think="on")["kvlens"]["scores"]
    assert a["hs_coe_c"] == b["hs_coe_c"] and a["kv_coe_c"] != b["kv_coe_c"]
    out = subprocess.run([BIN, "generate", "-m", MODEL, "-p", QUESTION, "--think", "on", "-n", "300", "-t", "2",
                          "--scores", "/dev/stdout", "--coe-layers", "all", "--coe-kv-part", "kv_cat",
                          "--coe-head-agg", "flatten"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1])["scores"]["kv_coe_c"] == pytest.approx(b["kv_coe_c"], rel=1e-12)
    with pytest.raises(kvlens.Error, match="coe_kv_part"):
        kvlens.Api(model, coe_kv_part="kv")


def untimed(r):
    """The response without its wall-clock (kvlens.cost.wall_ms), which differs from run to run."""
    r = json.loads(json.dumps(r))
    r["kvlens"]["cost"].pop("wall_ms")
    return r


def test_streaming_callback(api):
    full = chat(api, think="on")
    chunks = []
    r = api.chat({"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "think": "on"},
                 chunks.append)
    assert r["kvlens"]["cost"]["wall_ms"] > 0
    assert untimed(r) == {**untimed(full), "id": r["id"], "created": r["created"]}
    text = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["reasoning_content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # Returning False stops the generation.
    few = []
    api.chat({"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "think": "on"},
             lambda c: few.append(c) or len(few) < 3)
    assert len(few) == 3


def test_think_auto(api):
    r = chat(api, think="auto")
    assert r["kvlens"]["think"]["mode"] == "auto"
    assert r["kvlens"]["think"]["initial"] in ("fast", "slow")


def test_embeddings_equal_kvlens_embed(api, tmp_path):
    texts = ["12+34", "hello world"]
    got = api.embeddings({"input": texts})
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    subprocess.run([BIN, "embed", "-m", MODEL, "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "e.jsonl"),
                    "-t", "2"], check=True, capture_output=True)
    want = [json.loads(line)["embedding"] for line in open(tmp_path / "e.jsonl")]
    for d, w in zip(got["data"], want):
        np.testing.assert_allclose(d["embedding"], w, rtol=0, atol=1e-6)


def test_errors(model, api):
    with pytest.raises(kvlens.Error) as e:
        chat(api, temperature=5)
    assert e.value.param == "temperature" and isinstance(e.value, ValueError)
    with pytest.raises(kvlens.Error) as e:
        api.embeddings({"input": ["ok", ""]})
    assert e.value.param == "input[1]"
    with pytest.raises(kvlens.Error, match="missing.gguf"):
        kvlens.Model("/nonexistent/missing.gguf")
    with pytest.raises(kvlens.Error, match="kv_source"):
        kvlens.kv(model, "x", kv_source="disk")
    with pytest.raises(kvlens.Error, match="router"):
        kvlens.Api(kvlens.Model(TINY), router=ROUTER)  # trained for another model (and no thinking)


def test_threads_run_concurrently(api):
    one = chat(api, think="on")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda _: chat(api, think="on"), range(4)))
    # Requests decoded together in one batch: the same tokens, scores within float tolerance (a token decoded
    # beside others goes through products of another shape; tests/python/test_server_batching.py).
    for r in rs:
        assert r["choices"] == one["choices"]
        assert {k: v for k, v in untimed(r)["kvlens"].items() if k != "scores"} == \
            {k: v for k, v in untimed(one)["kvlens"].items() if k != "scores"}
        for k, v in one["kvlens"]["scores"].items():
            inv = k.startswith("inv_")  # 1/x of a near-zero x: compare x
            assert (1 / r["kvlens"]["scores"][k] if inv else r["kvlens"]["scores"][k]) == \
                pytest.approx(1 / v if inv else v, rel=1e-3, abs=1e-3), k


def test_batch_invariant(model):
    # Model(batch_invariant=True) + Api(batch_invariant=True) on a Q8_0 model: 4 concurrent requests give the
    # request alone's tokens and scores to the bit (tests/python/test_server_batch_invariant.py shows it on a
    # model where the default kernels change them). Refused: the reasoner's F16 matrices (llamafile's sgemm
    # sums a batch in another order), and an Api asking for it on a model loaded without it.
    with pytest.raises(kvlens.Error, match="is F16"):
        kvlens.Model(MODEL, batch_invariant=True)
    bi = kvlens.Model(TINY_Q8, batch_invariant=True)
    api = kvlens.Api(bi, parallel=4, threads=1, batch_invariant=True)
    req = {"messages": [{"role": "user", "content": "Count to ten"}], "temperature": 0, "max_tokens": 24}
    one = api.chat(req)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda _: api.chat(req), range(4)))
    for r in rs:
        assert r["choices"] == one["choices"]
        assert r["kvlens"]["scores"] == one["kvlens"]["scores"]
    with pytest.raises(kvlens.Error, match="batch_invariant"):
        kvlens.Api(kvlens.Model(TINY_Q8), batch_invariant=True)


def test_run_coe_eval_rescore(tmp_path):
    """run_coe_eval(rescore=True) relabels stored answers from their outputs, as `eval coe --rescore` does."""
    from kvlens import _kvlens

    out = str(tmp_path / "run")
    args = dict(model=TINY, dataset="arith", limit=4, max_tokens=4, parallel=2, threads=1, bootstrap=20, out=out)
    _kvlens.run_coe_eval(**args)
    path = os.path.join(out, "samples.jsonl")
    rows = [json.loads(line) for line in open(path)]
    first = dict(rows[0])
    rows[0].update(extracted="fake", matched=not first["matched"], correct=not first["correct"])
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    _kvlens.run_coe_eval(**args)  # without rescore: the stale label stays
    assert json.loads(open(path).readline())["extracted"] == "fake"
    _kvlens.run_coe_eval(rescore=True, **args)
    now = json.loads(open(path).readline())
    assert (now["extracted"], now["correct"]) == (first["extracted"], first["correct"])
    assert now["relabelled_from"]["extracted"] == "fake"


def test_run_coe_eval_recompute_scores(tmp_path):
    """run_coe_eval(recompute_scores=True) scores the stored answers again under another kv_coe_* configuration,
    as `eval coe --recompute-scores` does: the new kv_coe_* are what decoding stored in the grid for it."""
    from kvlens import _kvlens

    out = str(tmp_path / "run")
    args = dict(model=TINY, dataset="arith", limit=4, max_tokens=8, parallel=1, threads=1, bootstrap=20, out=out)
    _kvlens.run_coe_eval(**args)
    path = os.path.join(out, "samples.jsonl")
    before = [json.loads(line) for line in open(path)]
    _kvlens.run_coe_eval(recompute_scores=True, coe_layers="all", coe_kv_part="v", coe_positions="generated",
                         coe_head_agg="mean", **args)
    after = [json.loads(line) for line in open(path)]
    for b, a in zip(before, after):
        assert a["output_tokens"] == b["output_tokens"] and a["correct"] == b["correct"]
        assert a["scores_recomputed"]["token_coe"].startswith("layers=all kv_part=v positions=generated")
        want = b["token_grid"]["all|v|generated|mean"]
        for got, ref in zip([a["scores"]["kv_coe_r"], a["scores"]["kv_coe_c"]], want):
            assert (math.isnan(got) and math.isnan(ref)) or abs(got - ref) <= 1e-4 * max(1.0, abs(ref)), (got, ref)
    with pytest.raises(kvlens.Error, match="only --kv-source and --coe-"):
        _kvlens.run_coe_eval(recompute_scores=True, **dict(args, max_tokens=4))
