"""The Python package's API (python/kvlens/__init__.py) on the reasoning model, as installed by pip
(tests/cli/pip_install_test.sh) or from <build>/python: Model.chat == kvlens generate with the scores,
Model.score (of the model's own answer, and of a given answer by teacher forcing), Model.encode (sentence-transformers' shapes and normalize_embeddings) == /v1/embeddings and
kvlens embed, Model.kv, the installed dataset configs, the type stubs."""
import json
import os
import subprocess

import numpy as np
import pytest

import kvlens

BIN = os.environ["KVLENS_BIN"]
MODEL = os.environ["KVLENS_REASONER_MODEL"]
QUESTION = "What is 347+285?"


@pytest.fixture(scope="module")
def model():
    return kvlens.Model(MODEL, threads=1)


def test_chat_answers_with_scores(model):
    r = model.chat(QUESTION, think="on", temperature=0, max_tokens=300)
    out = subprocess.run([BIN, "generate", "-m", MODEL, "-p", QUESTION, "--think", "on", "-n", "300", "-t", "2",
                          "--scores", "/dev/stdout"], capture_output=True, text=True, check=True).stdout
    want = json.loads(out.strip().splitlines()[-1])
    assert isinstance(r, kvlens.ChatResult)
    assert r.text == str(r) == "Answer: 632"
    assert r.reasoning and r.finish_reason == "stop"
    assert r.usage["completion_tokens"] == r.raw["kvlens"]["n_generated"]
    assert set(r.scores) >= {"kv_coe_r", "kv_coe_c", "hs_coe_c", "max_prob", "inv_ppl", "neg_length"}
    for k in ("kv_coe_r", "kv_coe_c", "hs_coe_c", "max_prob"):
        assert r.scores[k] == pytest.approx(want["scores"][k], rel=1e-6), k
    # Messages (with a system prompt) and the request's other fields pass through as the server takes them.
    m = model.chat([{"role": "user", "content": QUESTION}], think="on", temperature=0, max_tokens=300)
    assert m.text == r.text and m.scores == r.scores
    assert model.chat(QUESTION, think="on", max_tokens=5, temperature=0).finish_reason == "length"
    # The think policies pass through too, with what they cost.
    b = model.chat(QUESTION, think="budget:6", temperature=0, max_tokens=300)
    assert b.think["mode"] == "budget:6" and b.cost["n_think_tokens"] == 6 and b.cost["n_trial_tokens"] == 0
    assert r.cost["n_think_tokens"] + r.cost["n_answer_tokens"] == r.usage["completion_tokens"]


def test_score_is_the_answers_scores(model):
    s = model.score(QUESTION, think="on", max_tokens=300)
    assert s == model.chat(QUESTION, think="on", max_tokens=300, temperature=0).scores


def test_score_a_given_answer(model):
    """Teacher forcing: the model's own answer, given as text, gets the scores chat gave it; another answer
    other scores."""
    own = model.chat(QUESTION, think="off", temperature=0, max_tokens=300)
    assert own.finish_reason == "stop"
    got = model.score(QUESTION, own.text, think="off")
    assert set(got) == set(own.scores)
    for k, v in own.scores.items():
        assert got[k] == (None if v is None else pytest.approx(v, rel=1e-6, abs=1e-9)), k
    other_text = "Answer: 633" if own.text != "Answer: 633" else "Answer: 634"
    other = model.score([{"role": "user", "content": QUESTION}], other_text, think="off")
    assert other["kv_coe_r"] != got["kv_coe_r"] and other["max_prob"] != got["max_prob"]
    with pytest.raises(TypeError):
        model.score(QUESTION, own.text, temperature=0.5)


def test_streaming(model):
    chunks = []
    r = model.chat(QUESTION, think="on", temperature=0, max_tokens=300, on_chunk=chunks.append)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == r.text


def test_encode_like_sentence_transformers(model):
    texts = ["12+34", "hello world", "a longer text about numbers"]
    raw = model.encode(texts)
    assert isinstance(raw, np.ndarray) and raw.dtype == np.float32 and raw.shape[0] == 3 and raw.ndim == 2
    norm = model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(norm, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)  # unnormalised by default, as sentence-transformers
    one = model.encode("hello world", normalize_embeddings=True)
    assert one.shape == (raw.shape[1],)
    np.testing.assert_allclose(one, norm[1], rtol=0, atol=1e-6)
    # The normalised vectors are the server's /v1/embeddings and kvlens embed's.
    api = [d["embedding"] for d in model.api.embeddings({"input": texts})["data"]]
    np.testing.assert_allclose(norm, api, rtol=0, atol=1e-6)
    assert isinstance(model.encode(texts, convert_to_numpy=False), list)
    with pytest.raises(kvlens.Error) as e:
        model.encode(["ok", " "])
    assert e.value.param == "texts[1]"


def test_kv_arrays(model):
    d = model.kv(QUESTION, hidden=True)
    n = len(model.tokenize(QUESTION))
    assert d["k"].shape == d["v"].shape == (model.info["n_layer"], n, model.info["kv_width"])
    assert d["hidden"].shape == (model.info["n_layer"] + 1, n, model.info["n_embd"])
    np.testing.assert_array_equal(d["k"], kvlens.kv(model, QUESTION)["k"])


def test_installed_data_and_stubs():
    pkg = os.path.dirname(kvlens.__file__)
    for f in ("py.typed", "_kvlens.pyi"):
        assert os.path.isfile(os.path.join(pkg, f)), f
    d = kvlens.data_dir()
    assert os.path.isfile(os.path.join(d, "arith.json")), d
    if os.environ.get("KVLENS_EXPECT_INSTALLED_DATA") == "1" and not os.environ.get("KVLENS_DATA_DIR"):
        # pip's install: the configs shipped in the package, not the source tree's, and every file they name.
        assert os.path.realpath(d) == os.path.realpath(os.path.join(pkg, "data", "configs")), d
        for cfg in sorted(os.listdir(d)):
            if cfg.endswith(".json"):
                name = json.load(open(os.path.join(d, cfg)))["file"]
                assert os.path.isfile(os.path.join(d, name)), f"{cfg}: {name} not shipped"
        assert os.path.isfile(os.path.join(pkg, "data", "README.md")), "the datasets' licences"
