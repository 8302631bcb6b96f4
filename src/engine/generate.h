// Generation: sampling and the decode loop, for one sequence or several decoded together in one batch.
#pragma once

#include <llama.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"

namespace kvlens {

struct SamplingParams {
    float temperature = 0.0f;  // <= 0: greedy (argmax)
    int top_k = 40;            // 0: off
    float top_p = 0.95f;       // 1: off
    uint32_t seed = 0;         // sequence i of a batch samples with seed + i
};

// Validates ranges; throws Error naming the parameter.
void check_sampling_params(const SamplingParams& p);

// Per generated token, from the model's own distribution (softmax of the logits at temperature 1, before
// any sampling filter): what output-probability baselines need.
struct StepStats {
    float prob = 0;      // probability of the chosen token
    float max_prob = 0;  // largest probability
    float entropy = 0;   // nats
};

// Softmax statistics of raw logits (temperature 1) for the chosen token.
StepStats step_stats(const float* logits, int n_vocab, llama_token chosen);

// The llama.cpp sampler chain for these parameters (greedy, or top-k -> top-p -> temperature -> draw with
// `seed`), and one draw from raw logits with it (buf is scratch). Shared by every decode loop so that the
// same prompt, parameters and seed give the same tokens everywhere.
struct SamplerDeleter {
    void operator()(llama_sampler* s) const { llama_sampler_free(s); }
};
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;
SamplerPtr make_sampler(const SamplingParams& p, uint32_t seed);
llama_token sample_token(llama_sampler* s, const float* logits, int n_vocab,
                         std::vector<llama_token_data>& buf);

enum class StopReason { EndOfTurn, MaxTokens, ContextFull, Callback };
const char* to_string(StopReason r);

struct Generation {
    llama_seq_id seq = 0;
    std::vector<llama_token> prompt;
    std::vector<llama_token> output;  // generated tokens, including a final end-of-turn token if one came
    std::vector<StepStats> steps;     // one per output token
    StopReason stop = StopReason::MaxTokens;
    std::string text;  // output detokenized, end-of-turn token excluded
};

struct GenerateParams {
    int max_tokens = 256;
    SamplingParams sampling;
    // Called after each generated token of sequence i; return false to stop that sequence. Optional.
    std::function<bool(int i, const Generation& g)> on_token;
};

// Decodes each prompt into its own sequence (seq ids first_seq, first_seq+1, ...; prompts are prefilled
// together and then decoded one token per sequence per batch) and generates until each stops.
// The sequences must be empty. Throws Error when the prompts do not fit the context.
std::vector<Generation> generate(Session& session, const std::vector<std::vector<llama_token>>& prompts,
                                 const GenerateParams& params, llama_seq_id first_seq = 0);

// Teacher forcing in one pass: what a decode loop that forces `answer` after `prompt` into sequence `seq`
// returns (Batcher::join with forced tokens: the same output, stop reason, text and step statistics, and
// the same rows handed to capture observers), but computed like a prompt: prompt and answer (all but its
// last token, never fed back) are decoded in chunks of up to `chunk` tokens with logits at every answer
// position: the weights are read once per chunk instead of once per token. The numbers differ from the
// step-wise ones only by the rounding of batched kernels. The answer is cut after its first end-of-generation
// token, as a decode loop stops there. The sequence must be empty; its cells stay taken. Throws Error when
// the prompt or the answer is empty or they do not fit the context.
Generation score_forced(Session& session, llama_seq_id seq, const std::vector<llama_token>& prompt,
                        std::vector<llama_token> answer, int chunk = 128);

}  // namespace kvlens
