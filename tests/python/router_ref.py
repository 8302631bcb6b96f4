"""Independent numpy reference of kvlens's KVClassifier (src/methods/router.cpp), in float64.

Torch conventions throughout: the network is Linear(F, H) -> ReLU -> Linear(H, 1), w1 has shape (H, F) like
torch.nn.Linear.weight; the loss is the mean squared error over the minibatch (torch.nn.MSELoss()); the
optimiser is torch.optim.AdamW (decoupled weight decay), which kvlens applies to the weight matrices only,
not to the biases. A router file (JSON, "format": "kvlens-router") stores the classifier as
{"mean", "sd", "out_scale", "w1" (H x F), "b1", "w2", "b2"}; prediction = out_scale * net((x - mean) / sd).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


def weights(d: dict) -> dict:
    """{"w1": (H, F), "b1": (H,), "w2": (H,), "b2": float} as float64 arrays."""
    return {
        "w1": np.asarray(d["w1"], dtype=np.float64),
        "b1": np.asarray(d["b1"], dtype=np.float64),
        "w2": np.asarray(d["w2"], dtype=np.float64),
        "b2": np.float64(d["b2"]),
    }


def pre_activations(w: dict, x: np.ndarray) -> np.ndarray:
    return x @ w["w1"].T + w["b1"]


def forward(w: dict, x: np.ndarray) -> np.ndarray:
    """Network output for rows x (n, F)."""
    return np.maximum(pre_activations(w, x), 0.0) @ w["w2"] + w["b2"]


def loss_grad(w: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """MSE over the rows and its gradient (same keys and shapes as w)."""
    n = x.shape[0]
    z = pre_activations(w, x)
    a = np.maximum(z, 0.0)
    out = a @ w["w2"] + w["b2"]
    r = out - y
    g_out = 2.0 * r / n
    dz = np.outer(g_out, w["w2"]) * (z > 0)
    grad = {"w1": dz.T @ x, "b1": dz.sum(axis=0), "w2": a.T @ g_out, "b2": np.float64(g_out.sum())}
    return float(np.mean(r * r)), grad


@dataclass
class Adam:
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    t: int = 0
    m: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)

    def step(self, w: dict, grad: dict) -> dict:
        """One AdamW step (torch.optim.AdamW's arithmetic); decay on w1 and w2 only. Returns new weights."""
        if not self.m:
            self.m = {k: np.zeros_like(np.asarray(w[k])) for k in w}
            self.v = {k: np.zeros_like(np.asarray(w[k])) for k in w}
        self.t += 1
        bc1 = 1.0 - self.beta1**self.t
        bc2 = 1.0 - self.beta2**self.t
        new = {}
        for k in w:
            p = np.asarray(w[k], dtype=np.float64)
            if k in ("w1", "w2"):
                p = p * (1.0 - self.lr * self.weight_decay)
            g = grad[k]
            self.m[k] = self.beta1 * self.m[k] + (1.0 - self.beta1) * g
            self.v[k] = self.beta2 * self.v[k] + (1.0 - self.beta2) * g * g
            new[k] = p - (self.lr / bc1) * self.m[k] / (np.sqrt(self.v[k]) / np.sqrt(bc2) + self.eps)
        return new


def load_router(path: str) -> dict:
    """The classifier of a router file: weights plus mean, sd (None when absent) and out_scale."""
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    assert j["format"] == "kvlens-router" and j["version"] == 1, (j.get("format"), j.get("version"))
    c = j["classifier"]
    r = weights(c)
    r["mean"] = np.asarray(c["mean"], dtype=np.float64) if c["mean"] else None
    r["sd"] = np.asarray(c["sd"], dtype=np.float64) if c["sd"] else None
    r["out_scale"] = float(c["out_scale"])
    r["n_features"] = int(c["n_features"])
    r["model"] = j["model"]
    r["features"] = j["features"]
    return r


def predict(router: dict, x: np.ndarray) -> np.ndarray:
    """Difficulty on the 0..100 scale for rows x (n, F)."""
    if router["mean"] is not None:
        x = (x - router["mean"]) / router["sd"]
    return router["out_scale"] * forward(router, x)
