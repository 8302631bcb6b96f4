"""kvlens: the KV cache of an LLM as a free representation (KV-CoE confidence, fast/slow thinking, embeddings).

    import kvlens
    m = kvlens.Model("model.gguf")
    r = m.chat("What is 347+285?")            # r.text, r.reasoning, r.scores["kv_coe_r"], r.raw (the JSON)
    m.encode(["a text", "another"], normalize_embeddings=True)   # numpy [2, width]
    m.kv("some text")["k"]                    # numpy [layer, token, kv width]

`Model.chat` takes what `kvlens serve` takes (OpenAI's chat-completions request plus kvlens' additions);
`Api` is that API itself, request dicts in, response dicts out. A refused request raises `Error` (a
ValueError) with `.param`. Computation releases the GIL.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _kvlens
from ._kvlens import Error, data_dir

__version__: str = _kvlens.__version__
__all__ = ["Model", "ChatResult", "Api", "Error", "kv", "data_dir", "__version__"]

Message = Dict[str, Any]
Messages = Union[str, Sequence[Message]]


def _core(model: Any) -> Any:
    """The extension's model inside a kvlens.Model (the extension's own is accepted too)."""
    return model._model if isinstance(model, Model) else model


class Api(_kvlens.Api):
    """The OpenAI-compatible API of `kvlens serve` without HTTP: `chat(request)` and `embeddings(request)`
    take and return the JSON of POST /v1/chat/completions and /v1/embeddings as dicts."""

    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(_core(model), **options)


def kv(model: Any, text: Union[str, Sequence[int]], **options: Any) -> Dict[str, Any]:
    """Per-layer K (post-RoPE) and V of every token of a text (or token ids), one forward pass:
    {"tokens", "k", "v"[, "hidden"]}, arrays [layer, token, kv width] (hidden: [layer + 1, token, n_embd])."""
    return _kvlens.kv(_core(model), text, **options)


@dataclass
class ChatResult:
    """One answer: its text, its thinking, and what the KV cache says about it."""

    text: str
    reasoning: Optional[str]
    scores: Dict[str, Optional[float]]  # kv_coe_r, kv_coe_c, hs_coe_*, max_prob, ... (+ p_correct.*)
    finish_reason: Optional[str]
    usage: Dict[str, int]
    think: Optional[Dict[str, Any]] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)  # the response as the HTTP API gives it
    # What the answer cost: think / answer / trial tokens, trials, decode calls (None in the shared batch),
    # wall-clock ms.
    cost: Optional[Dict[str, Any]] = None

    def __str__(self) -> str:
        return self.text


def _messages(messages: Messages, system: Optional[str]) -> List[Message]:
    out: List[Message] = [{"role": "system", "content": system}] if system is not None else []
    if isinstance(messages, str):
        out.append({"role": "user", "content": messages})
    else:
        out.extend(dict(m) for m in messages)
    return out


class Model:
    """A GGUF model, loaded once. Options for its chat API (n_ctx, threads, parallel, max_tokens,
    chat_template, router, calibration, flash_attn, kv_source, coe_layers, coe_kv_part, coe_positions,
    coe_head_agg, batch_invariant) are those of `kvlens serve` / `kvlens.Api`; batch_invariant=True also loads
    the weights as the file has them, which that mode needs."""

    def __init__(self, path: str, *, gpu_layers: int = -1, verbose: bool = False, **api_options: Any) -> None:
        self._model = _kvlens.Model(str(path), gpu_layers=gpu_layers, verbose=verbose,
                                    batch_invariant=bool(api_options.get("batch_invariant", False)))
        # router / calibration: None or a path-like, as the extension wants a str ("" = none).
        self._api_options: Dict[str, Any] = {
            k: ("" if v is None else str(v)) if k in ("router", "calibration") else v for k, v in api_options.items()}
        self._api = _kvlens.Api(self._model, **self._api_options)

    @property
    def path(self) -> str:
        return self._model.path

    @property
    def info(self) -> Dict[str, Any]:
        """arch, name, n_layer, n_embd, n_head, n_head_kv, head_dim, kv_width, n_ctx_train, n_vocab, ..."""
        return self._model.info

    @property
    def api(self) -> Api:
        """The request/response API (same JSON as the server) over this model."""
        return self._api  # type: ignore[return-value]

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> List[int]:
        return self._model.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: Sequence[int], render_special: bool = False) -> str:
        return self._model.detokenize(list(tokens), render_special)

    def chat(self, messages: Messages, *, system: Optional[str] = None, max_tokens: Optional[int] = None,
             temperature: Optional[float] = None, think: Optional[str] = None,
             on_chunk: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None,
             **request: Any) -> ChatResult:
        """Answers a prompt (a string: one user message) or a list of chat messages, with the answer's scores.

        temperature (0: greedy), max_tokens, think ("default", "on", "off", "auto" with a router, "budget:N",
        "deer" or "deer:T") and any other field of the server's request (top_p, top_k, seed, stop, ...) go
        into the request. on_chunk: streaming, called with every chat.completion.chunk dict; return False to
        stop."""
        req: Dict[str, Any] = {"messages": _messages(messages, system)}
        for k, v in (("max_tokens", max_tokens), ("temperature", temperature), ("think", think)):
            if v is not None:
                req[k] = v
        req.update(request)
        r = self._api.chat(req, on_chunk)
        choice = r["choices"][0]
        msg = choice["message"]
        ext = r.get("kvlens", {})
        return ChatResult(text=msg.get("content") or "", reasoning=msg.get("reasoning_content"),
                          scores=dict(ext.get("scores", {})), finish_reason=choice.get("finish_reason"),
                          usage=dict(r.get("usage", {})), think=ext.get("think"), raw=r, cost=ext.get("cost"))

    def score(self, messages: Messages, answer: Optional[str] = None, *, system: Optional[str] = None,
              think: Optional[str] = None, **kwargs: Any) -> Dict[str, Optional[float]]:
        """The KV-CoE and baseline scores (kv_coe_*, hs_coe_*, max_prob, inv_ppl, neg_length, ...) of an answer
        to `messages`. With `answer`: that text, decoded after the chat prompt as if the model had generated it
        (teacher forcing, closed by the template's end-of-turn token; for a thinking mode, the whole
        continuation, thinking included): the model's own answer gets exactly the scores chat gives it.
        Without: the model's own answer (greedy unless a temperature is given; the keyword arguments of chat).
        Calibrated probabilities (p_correct.*) come with chat only."""
        if answer is None:
            kwargs.setdefault("temperature", 0.0)
            return self.chat(messages, system=system, think=think, **kwargs).scores
        if kwargs:
            raise TypeError(f"score() with an answer takes no {sorted(kwargs)}")
        opts = {k: v for k, v in self._api_options.items()
                if k in ("chat_template", "threads", "flash_attn", "kv_source", "coe_layers", "coe_kv_part",
                         "coe_positions", "coe_head_agg")}
        r = _kvlens.score_answer(self._model, _messages(messages, system), answer, think=think or "default",
                                 **opts)
        return dict(r["scores"])

    def encode(self, sentences: Union[str, Sequence[str]], *, normalize_embeddings: bool = False,
               batch_size: int = 8, convert_to_numpy: bool = True, layers: str = "", kv_part: str = "kv_cat",
               head_agg: str = "mean", pos_agg: str = "mean", n_ctx: int = 4096, threads: Optional[int] = None,
               show_progress_bar: Optional[bool] = None) -> Any:
        """KV embeddings, as sentence-transformers' `encode`: a string gives a 1-D array, a list a 2-D
        array [len(sentences), width] (float32). The pooling is the server's: K;V of the text's tokens
        (BOS excluded) averaged, heads averaged, the last 4 layers averaged (layers: "all", "-4..-1",
        "0,3,-1"); normalize_embeddings=True L2-normalises each row (the server's /v1/embeddings does).
        convert_to_numpy=False gives a list of arrays; show_progress_bar is accepted and ignored."""
        del show_progress_bar
        single = isinstance(sentences, str)
        texts: List[str] = [sentences] if isinstance(sentences, str) else list(sentences)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        out = _kvlens.encode(self._model, texts, normalize=normalize_embeddings, layers=layers,
                             kv_part=kv_part, head_agg=head_agg, pos_agg=pos_agg, batch_size=batch_size,
                             n_ctx=n_ctx, threads=self._threads(threads))
        if single:
            return out[0]
        return out if convert_to_numpy else list(out)

    def kv(self, text: Union[str, Sequence[int]], *, hidden: bool = False, add_special: bool = True,
           threads: Optional[int] = None, kv_source: str = "cache") -> Dict[str, Any]:
        """Per-layer K (post-RoPE) and V of a text (or token ids): {"tokens", "k", "v"[, "hidden"]}, numpy
        float32 [layer, token, kv width] (hidden: the residual stream [layer + 1, token, n_embd])."""
        return _kvlens.kv(self._model, text, hidden=hidden, add_special=add_special,
                          threads=self._threads(threads), kv_source=kv_source)

    def _threads(self, threads: Optional[int]) -> int:
        """A call's threads, else the model's (Model(threads=...)), else 0: all."""
        return int(threads if threads is not None else self._api_options.get("threads", 0))

    def __repr__(self) -> str:
        return f"kvlens.Model({self.path!r})"
