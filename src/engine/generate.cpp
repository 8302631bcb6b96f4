#include "engine/generate.h"

#include <cmath>
#include <memory>

#include "engine/batcher.h"
#include "util/error.h"

namespace kvlens {

void check_sampling_params(const SamplingParams& p) {
    if (!(p.temperature >= 0.0f) || p.temperature > 100.0f)
        throw Error("temperature: " + std::to_string(p.temperature) + " out of range [0, 100]");
    if (p.top_k < 0) throw Error("top_k: " + std::to_string(p.top_k) + " must be >= 0");
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
        throw Error("top_p: " + std::to_string(p.top_p) + " out of range (0, 1]");
}

const char* to_string(StopReason r) {
    switch (r) {
        case StopReason::EndOfTurn:
            return "end_of_turn";
        case StopReason::MaxTokens:
            return "max_tokens";
        case StopReason::ContextFull:
            return "context_full";
        case StopReason::Callback:
            return "callback";
    }
    return "?";
}

// In double: the chosen token's probability, the max and the entropy.
StepStats step_stats(const float* logits, int n_vocab, llama_token chosen) {
    double m = logits[0];
    for (int i = 1; i < n_vocab; ++i) m = std::max(m, (double)logits[i]);
    double z = 0, zl = 0;  // z = sum e^(l-m), zl = sum e^(l-m) * (l-m)
    for (int i = 0; i < n_vocab; ++i) {
        const double d = logits[i] - m, e = std::exp(d);
        z += e;
        zl += e * d;
    }
    StepStats s;
    s.prob = (float)(std::exp(logits[chosen] - m) / z);
    s.max_prob = (float)(1.0 / z);
    s.entropy = (float)(std::log(z) - zl / z);  // H = -sum p log p with log p = d - log z
    return s;
}

SamplerPtr make_sampler(const SamplingParams& p, uint32_t seed) {
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (p.temperature <= 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        return chain;
    }
    if (p.top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(p.top_k));
    if (p.top_p < 1.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(p.top_p, 1));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(p.temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(seed));
    return chain;
}

llama_token sample_token(llama_sampler* s, const float* logits, int n_vocab,
                         std::vector<llama_token_data>& buf) {
    buf.resize(n_vocab);
    for (int i = 0; i < n_vocab; ++i) buf[i] = {i, logits[i], 0.0f};
    llama_token_data_array arr = {buf.data(), buf.size(), -1, false};
    llama_sampler_apply(s, &arr);
    const llama_token t = arr.data[arr.selected].id;
    llama_sampler_accept(s, t);
    return t;
}

std::vector<Generation> generate(Session& session, const std::vector<std::vector<llama_token>>& prompts,
                                 const GenerateParams& params, llama_seq_id first_seq) {
    check_sampling_params(params.sampling);
    if (params.max_tokens < 1)
        throw Error("max_tokens: " + std::to_string(params.max_tokens) + " must be >= 1");
    const int n = (int)prompts.size();
    if (n == 0) return {};
    if (first_seq < 0 || first_seq + n > session.n_seq_max())
        throw Error("generate: " + std::to_string(n) + " sequences do not fit the session's " +
                    std::to_string(session.n_seq_max()) + " sequence slots");

    int64_t used = 0;  // KV cells in use by our sequences (unified cache: n_ctx is shared)
    for (const auto& p : prompts) {
        if (p.empty()) throw Error("prompt: empty");
        used += (int64_t)p.size();
    }
    if (used + 1 > session.n_ctx())
        throw Error("prompt: " + std::to_string(used) + " tokens do not fit the context of " +
                    std::to_string(session.n_ctx()) + " tokens (raise --ctx or shorten the prompt)");

    // Every prompt joins at once: prefilled together in the first step, then one token each per step.
    Batcher batcher(session, false);
    for (int i = 0; i < n; ++i) {
        std::function<bool(const Generation&)> cb;
        if (params.on_token) cb = [&params, i](const Generation& g) { return params.on_token(i, g); };
        batcher.join(first_seq + i, prompts[i], params.max_tokens,
                     make_sampler(params.sampling, params.sampling.seed + (uint32_t)i), std::move(cb));
    }
    std::vector<Generation> gens(n);
    while (!batcher.empty())
        for (Generation& g : batcher.step()) gens[g.seq - first_seq] = std::move(g);
    return gens;
}

}  // namespace kvlens
