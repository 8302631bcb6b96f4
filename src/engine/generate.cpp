#include "engine/generate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

namespace {

// max(x, -87) for x <= 0, on the bits: for x <= 0 a larger magnitude is a larger unsigned pattern, and -inf
// and NaN clamp too. A float comparison would make the loop below branch instead of vectorise.
inline float clamp_nonpositive(float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    const uint32_t minus87 = 0xC2AE0000u;
    u = u < minus87 ? u : minus87;
    std::memcpy(&x, &u, sizeof x);
    return x;
}

// e^x for x in [-87, 0] in float arithmetic that the compiler vectorises (no calls, no branches): x = k ln2
// + r with |r| <= ln2/2 (Cody-Waite, k rounded to nearest by the 1.5 * 2^23 trick), e^r by Cephes' expf
// polynomial (relative error ~1e-7), 2^k from the exponent bits.
inline float exp_nonpositive(float x) {
    const float k = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;
    const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float er = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) * (1 << 23);
    float two_k;
    std::memcpy(&two_k, &bits, sizeof two_k);
    return er * two_k;
}

}  // namespace

// The chosen token's probability, the max and the entropy. This runs over the whole vocabulary (152k
// entries for Qwen) at every generated token, so it is written to vectorise: float e^(l-m) and (l-m) e^(l-m)
// in 16 lanes over blocks of 1024 entries, each block's lanes added into double sums (a double std::exp per
// entry cost ~3% of a Qwen2.5-0.5B decode step: docs/results/bench). On x86-64 GCC also builds an AVX2
// clone, chosen at load time where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
StepStats
step_stats(const float* logits, int n_vocab, llama_token chosen) {
    float m = logits[0];
    for (int i = 1; i < n_vocab; ++i) m = logits[i] > m ? logits[i] : m;
    double z = 0, zl = 0;  // z = sum e^(l-m), zl = sum e^(l-m) * (l-m)
    constexpr int kLanes = 16, kBlock = 1024;
    int i = 0;
    for (; i + kBlock <= n_vocab; i += kBlock) {
        float ze[kLanes] = {}, zd[kLanes] = {};
        for (int j = 0; j < kBlock; j += kLanes)
            for (int k = 0; k < kLanes; ++k) {
                // Clamped: an entry below max - 87 (a masked -inf too) adds ~1e-38 instead of 0.
                const float d = clamp_nonpositive(logits[i + j + k] - m), e = exp_nonpositive(d);
                ze[k] += e;
                zd[k] += e * d;
            }
        for (int k = 0; k < kLanes; ++k) {
            z += ze[k];
            zl += zd[k];
        }
    }
    for (; i < n_vocab; ++i) {
        const float d = clamp_nonpositive(logits[i] - m), e = exp_nonpositive(d);
        z += e;
        zl += (double)e * d;
    }
    StepStats s;
    s.prob = (float)(std::exp((double)logits[chosen] - m) / z);
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
    // Greedy (make_sampler's chain of one "greedy"): the first maximum, as llama.cpp's greedy sampler picks
    // it, without building the candidate array over the whole vocabulary.
    if (std::strcmp(llama_sampler_name(s), "chain") == 0 && llama_sampler_chain_n(s) == 1 &&
        std::strcmp(llama_sampler_name(llama_sampler_chain_get(s, 0)), "greedy") == 0) {
        const llama_token t = (llama_token)(std::max_element(logits, logits + n_vocab) - logits);
        llama_sampler_accept(s, t);
        return t;
    }
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

Generation score_forced(Session& session, llama_seq_id seq, const std::vector<llama_token>& prompt,
                        std::vector<llama_token> answer, int chunk) {
    const Model& model = session.model();
    if (prompt.empty()) throw Error("prompt: empty");
    if (answer.empty()) throw Error("answer: empty");
    if (chunk < 1) throw Error("chunk: " + std::to_string(chunk) + " must be >= 1");
    if (seq < 0 || seq >= session.n_seq_max())
        throw Error("score: sequence " + std::to_string(seq) + " is not one of the session's " +
                    std::to_string(session.n_seq_max()) + " sequence slots");
    for (size_t i = 0; i < answer.size(); ++i)
        if (model.is_eog(answer[i])) {
            answer.resize(i + 1);
            break;
        }
    const int64_t cells = (int64_t)prompt.size() + (int64_t)answer.size() - 1;
    if (cells > session.n_ctx())
        throw Error("score: " + std::to_string(prompt.size()) + " prompt and " +
                    std::to_string(answer.size()) + " answer tokens do not fit the context of " +
                    std::to_string(session.n_ctx()) + " tokens");

    Generation g;
    g.seq = seq;
    g.prompt = prompt;
    g.output = answer;
    g.steps.reserve(answer.size());
    // Token j of prompt ++ answer sits at position j; the logits at position n_prompt - 1 + i give answer[i].
    const int n_prompt = (int)prompt.size();
    const int n_vocab = model.info().n_vocab;
    std::vector<BatchToken> batch;
    for (int begin = 0; begin < (int)cells; begin += chunk) {
        const int end = (int)std::min<int64_t>(cells, begin + chunk);
        batch.clear();
        for (int j = begin; j < end; ++j) {
            const llama_token tok = j < n_prompt ? prompt[j] : answer[j - n_prompt];
            batch.push_back({tok, (llama_pos)j, seq, j >= n_prompt - 1});
        }
        session.decode(batch);
        for (int j = std::max(begin, n_prompt - 1); j < end; ++j) {
            const llama_token next = answer[j - (n_prompt - 1)];
            g.steps.push_back(step_stats(session.logits(j - begin), n_vocab, next));
        }
    }
    g.stop = model.is_eog(answer.back()) ? StopReason::EndOfTurn : StopReason::MaxTokens;
    std::vector<llama_token> visible = answer;
    if (g.stop == StopReason::EndOfTurn) visible.pop_back();
    g.text = model.detokenize(visible);
    return g;
}

}  // namespace kvlens
