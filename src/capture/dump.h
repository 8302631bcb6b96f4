// The raw per-layer K and V (and hidden states) of one token sequence, from one forward pass: what
// `kvlens dump` writes as .npz and the Python bindings return as numpy arrays.
#pragma once

#include <vector>

#include "engine/model.h"

namespace kvlens {

struct KvDump {
    int n_layer = 0, n_tokens = 0, kv_width = 0, n_embd = 0;
    std::vector<float> k, v;    // [n_layer, n_tokens, kv_width], position order
    std::vector<float> hidden;  // [n_layer + 1, n_tokens, n_embd]: token embeddings, then each layer's output
};

// Decodes `tokens` as sequence 0 of an empty session (positions 0..n-1) and records every row. decode_from =
// 0: one batch; decode_from = N > 0: tokens [0, N) as one batch, then one token per batch, as generate()
// computes a prompt of N tokens and its answer (the rows are then those a generation saw, not a prefill's,
// whose matmuls may round differently). Throws Error when they do not fit the context, decode_from is out of
// range, or a row was not captured (a graph layout the capture does not know).
KvDump dump_kv(Session& session, const std::vector<llama_token>& tokens, bool hidden, int decode_from = 0);

}  // namespace kvlens
