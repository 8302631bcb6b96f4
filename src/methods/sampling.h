// N samples of one prompt decoded together in one batch, sharing the prompt's KV prefix, each with its own
// KV-CoE, hidden-state CoE and output-probability scores (method.md section 5).
//
// Prefix sharing: prompt[0..n-2] is decoded once, in the first sequence, without logits; llama_memory_seq_cp
// then adds the other N-1 sequences to those cache cells (the unified cache shares the cells, it does not
// copy them). The *last* prompt token is decoded separately, once per sequence, all N in one batch: its
// position is the first KV-CoE producer position (its forward pass produces the first output token), so every
// sample needs its own K/V row and hidden states there for its CoeScorer, and its own logits to sample its
// first token from. (Copying it too would give every sample the same first row but leave only one sequence
// with captured rows and logits.) The prompt therefore costs n-1 + N token evaluations instead of N*n.
#pragma once

#include <llama.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/generate.h"
#include "engine/model.h"
#include "methods/coe.h"

namespace kvlens {

struct SampleParams {
    int n = 4;  // samples
    int max_tokens = 256;
    SamplingParams sampling;  // sample i uses seed + i
    TokenCoeSpec token_coe;   // the configuration of kv_coe_*
    // Asked before every step; false: every sample still going stops there with what it has
    // (StopReason::Callback). The server's timeout and shutdown.
    std::function<bool()> keep_going;
};

struct SampleOut {
    Generation gen;                        // gen.prompt is the shared prompt
    CoeResult coe;                         // scores of this sample
    std::map<std::string, double> scores;  // coe.named()
};

struct SampleSet {
    std::vector<SampleOut> samples;
    int64_t n_decode_calls = 0;  // llama_decode calls this call made
    int64_t n_tokens_decoded =
        0;  // tokens submitted to decode (prompt n-1 + N, then one per sample per step)
    int64_t n_prompt_tokens_decoded = 0;  // of which the prompt: n-1 + N
};

// Samples params.n answers to `prompt` in sequences first_seq .. first_seq+n-1 of `session`, which must be
// empty and fit. Returns them in sequence order. Throws Error on bad parameters or when the context is too
// small for the prompt plus one token per sample.
SampleSet sample_n(Session& session, const std::vector<llama_token>& prompt, const SampleParams& params,
                   llama_seq_id first_seq = 0);

}  // namespace kvlens
