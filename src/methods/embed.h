// Sentence embeddings pooled from the KV cache of one forward pass (method.md section 4).
//
// Texts are embedded raw (no chat template), tokenized with the model's BOS when it wants one; the BOS row
// is left out of the pooling because it is the same for every text (causal attention: position 0 sees only
// itself). Several texts are decoded together as separate sequences of one session; each text is one
// forward pass, nothing is generated. The mean hidden state of the same layers (Tap::Hidden, the residual
// stream after each layer) can be pooled from the same pass as a baseline.
#pragma once

#include <string>
#include <vector>

#include "capture/pooling.h"
#include "engine/model.h"

namespace kvlens {

// The paper's preset: K;V, mean over the text tokens, heads averaged, last 4 layers averaged, L2-normalised.
PoolSpec embed_preset();

struct EmbedParams {
    PoolSpec spec = embed_preset();
    bool kv = true;  // pool K/V with `spec`
    bool hidden =
        false;  // also the hidden-state baseline: mean over tokens, mean over spec's layers, L2-normalised
    int batch_seqs = 8;  // texts decoded together (the session needs n_seq_max >= this)
};

// One text's result. ok == false: `error` says why (empty text, invalid UTF-8, too long ...), vectors are
// empty.
struct Embedding {
    bool ok = false;
    std::string error;
    int n_tokens = 0;           // tokens decoded, BOS included
    std::vector<float> kv;      // KvPool result rows, concatenated (one row unless layer_agg == none)
    std::vector<float> hidden;  // n_embd floats when params.hidden
};

// Why a text cannot be embedded before tokenizing it ("" when it can): empty or blank, invalid UTF-8
// (naming the byte offset), or a NUL byte.
std::string text_problem(const std::string& text);

class Embedder {
public:
    // The session is borrowed; it is cleared before each group of texts.
    Embedder(Session& session, const EmbedParams& params);

    // Floats per text of Embedding::kv and ::hidden.
    int kv_width() const { return kv_width_; }
    int hidden_width() const;
    const std::vector<int>& layers() const { return layers_; }

    // Embeds the texts; a bad text gets ok == false and the others are still embedded. Texts are packed into
    // groups of at most batch_seqs sequences whose tokens fit the context together.
    std::vector<Embedding> embed(const std::vector<std::string>& texts);

private:
    void run_group(const std::vector<std::vector<llama_token>>& toks, const std::vector<size_t>& idx,
                   std::vector<Embedding>& out);
    Session& session_;
    EmbedParams params_;
    int kv_width_ = 0;
    std::vector<int> layers_;  // resolved layers of spec
};

}  // namespace kvlens
