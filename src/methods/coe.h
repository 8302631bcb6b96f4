// KV-CoE (method.md section 2): confidence scores from the trajectory of a response's representation across
// layers, the chain h_0 -> h_1 -> ... -> h_N.
//
// Two chains per generated response, both pooled by a mean over the *producer positions* (the last prompt
// position and every generated token fed back; the last generated token never gets K/V):
//   - KV chain: one state per layer l = 0..L-1, h_l = mean_t [K_l[t] ; V_l[t]] (heads flattened), or K or V
//     alone: L states, L-1 steps. Free: the K/V rows are computed anyway.
//   - Hidden chain (the original CoE): token embeddings, then the residual stream after each layer: L+1
//     states, L steps.
// Both are accumulated while the model decodes, in O(layers x width) memory per sequence whatever the output
// length, and can be scored at any decoding step.
//
// Scores on a chain h_0..h_N (N steps, i = 0..N-1), computed in double:
//   M_i = ||h_{i+1} - h_i|| / ||h_N - h_0||
//   A_i = angle(h_{i+1}, h_i) / angle(h_N, h_0),   angle(a, b) = arccos(clip(cos(a, b), -1, 1))
//   mag = mean M_i,  ang = mean A_i,  r = mag - ang,  c = sqrt((mean M_i cos A_i)^2 + (mean M_i sin A_i)^2)
// Higher r / c = "more likely correct".
//
// Degenerate cases: every output is finite, and `status` says which convention applied (bit flags):
//   kCoeNoStep             fewer than 2 states: no step. mag = ang = r = c = 0, m and a empty.
//   kCoeZeroNorm           some state is the zero vector: its direction, hence cos, is undefined. Every
//                          angle involving a zero vector is taken as 0 (no turn can be measured).
//   kCoeEqualEndpoints     ||h_N - h_0|| = 0 exactly: the magnitude normaliser is taken as 1, so M_i are raw
//                          step lengths. (A non-zero difference, however small, is computed to full
//                          relative precision and is used as is.)
//   kCoeParallelEndpoints  angle(h_N, h_0) = 0 (after snapping, below; or an endpoint is zero): the angle
//                          normaliser is taken as 1, so A_i are raw radians.
// Angle snapping: arccos cannot resolve angles near 0 or pi (its slope is infinite at +-1; cos(a, a) itself
// rounds to 1 +- 1 ulp, i.e. an angle of ~1.5e-8, more with rounding in long dot products), so such angles
// are noise and would make a normaliser noise too. Angles within kCoeAngleSnap of 0 or pi become exactly 0 or
// pi. A constant chain (all states equal) has both endpoint flags and every score 0.
#pragma once

#include <llama.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "capture/kv_capture.h"
#include "capture/observers.h"
#include "capture/pooling.h"
#include "engine/generate.h"
#include "engine/model.h"

namespace kvlens {

// ---- scores on a chain ------------------------------------------------------------------------------------

enum CoeStatus : uint32_t {
    kCoeOk = 0,
    kCoeNoStep = 1u << 0,
    kCoeZeroNorm = 1u << 1,
    kCoeEqualEndpoints = 1u << 2,
    kCoeParallelEndpoints = 1u << 3,
};
// "ok", or the set flags joined by '|', e.g. "zero_norm|parallel_endpoints".
std::string coe_status_string(uint32_t status);

constexpr double kCoeAngleSnap = 1e-6;  // radians; see "Angle snapping" above

struct CoeScores {
    double mag = 0, ang = 0, r = 0, c = 0;
    std::vector<double> m, a;   // M_i and A_i, i = 0..N-1
    double endpoint_dist = 0;   // ||h_N - h_0||, before any substitution
    double endpoint_angle = 0;  // angle(h_N, h_0) after snapping, before any substitution
    uint32_t status = kCoeOk;   // CoeStatus flags
};

// A chain h_0..h_N: n_states rows of `width` doubles, row-major.
struct Chain {
    int n_states = 0;
    int width = 0;
    std::vector<double> data;
    const double* row(int i) const { return data.data() + (size_t)i * width; }
};

// Throws Error when n_states < 1, width < 1, or a value is not finite or exceeds 1e150 in magnitude (squares
// must not overflow; float inputs never do).
CoeScores coe_scores(const double* h, int n_states, int width);
CoeScores coe_scores(const float* h, int n_states, int width);
inline CoeScores coe_scores(const Chain& ch) {
    return coe_scores(ch.data.data(), ch.n_states, ch.width);
}

// ---- chains from one generation, streamed -----------------------------------------------------------------

// The KV chain of one sequence: a KvPool (kv_cat, mean over positions, heads flattened, one row per layer,
// all layers) fed the producer positions, pos >= n_prompt - 1. K and V are pooled together; the pooled row of
// a layer is [K ; V], and the K-only and V-only chains are its halves.
//
// Not copyable or movable (the observer refers to the pool). Subscribe observer() to the session's capture
// before the prompt is decoded, or feed pool() directly.
class KvCoe {
public:
    KvCoe(const ModelInfo& mi, llama_seq_id seq, int n_prompt);
    KvCoe(const KvCoe&) = delete;
    KvCoe& operator=(const KvCoe&) = delete;

    KvObserver& observer() { return observer_; }
    KvPool& pool() { return pool_; }
    const KvPool& pool() const { return pool_; }

    // Producer positions pooled so far.
    int64_t count() const { return pool_.count(); }
    // The chain now (L states): part = KV for [K ; V], K or V for one half.
    Chain chain(KvPart part) const;
    CoeScores scores(KvPart part) const { return coe_scores(chain(part)); }
    size_t state_bytes() const { return pool_.state_bytes(); }

private:
    KvPool pool_;
    PoolObserver observer_;
};

// The hidden-state chain of one sequence: state 0 = token embeddings (Tap::Embd), state l+1 = residual stream
// after layer l (Tap::Hidden), each a running mean over the producer positions. The last layer's residual
// stream exists only for tokens with logits; generate() asks logits for exactly the producer positions, so
// every state counts the same positions (counts() lets callers check). The last state is the residual stream
// before the final norm (HF's output_hidden_states ends with the normed one instead).
class HiddenCoe : public KvObserver {
public:
    HiddenCoe(const ModelInfo& mi, llama_seq_id seq, int n_prompt);

    bool wants(Tap tap, int layer) const override;
    void on_rows(const TapRows& rows) override;
    // One producer position's row of layer `layer` (-1: embeddings), n_embd floats.
    void add_row(int layer, const float* row);

    // Rows added per state (L+1 entries); count() is that of state 0.
    const std::vector<int64_t>& counts() const { return count_; }
    int64_t count() const { return count_[0]; }
    // The chain now (L+1 states); a state with no row yet is zero.
    Chain chain() const;
    CoeScores scores() const { return coe_scores(chain()); }
    size_t state_bytes() const;

private:
    int n_layer_, n_embd_;
    llama_seq_id seq_;
    llama_pos pos_begin_;
    std::vector<double> sum_;  // (L+1) x n_embd
    std::vector<int64_t> count_;
};

// Bytes that storing the hidden-state trajectory per token would take (float32): (L+1) * n_embd * 4 *
// n_tokens.
size_t hidden_trajectory_bytes(int n_layer, int n_embd, int64_t n_tokens);

// ---- output-probability baselines -------------------------------------------------------------------------

// From the steps of a generation; higher = more confident. No steps: all 0.
struct ProbScores {
    double max_prob = 0;     // mean over steps of the largest probability
    double inv_ppl = 0;      // 1/perplexity = exp(mean log p(chosen)); p is floored at the smallest float
    double inv_entropy = 0;  // 1 / max(mean entropy, kCoeMinEntropy)
};
constexpr double kCoeMinEntropy = 1e-6;  // nats: a certain model gives entropy 0; keeps 1/H finite
ProbScores prob_scores(const std::vector<StepStats>& steps);

// ---- everything for one sequence --------------------------------------------------------------------------

struct CoeResult {
    CoeScores kv, k, v, hs;  // per-step M_i / A_i included
    ProbScores prob;
    int64_t n_producer = 0;  // producer positions pooled
    // Every score by name: {kv,k,v,hs}_coe_{r,c,mag,ang}, max_prob, inv_ppl, inv_entropy.
    std::map<std::string, double> named() const;
};

// Subscribes a KvCoe and a HiddenCoe for one sequence to a session's capture (and unsubscribes on
// destruction; the session must outlive the scorer). Create it before generate() decodes the prompt. For N
// sequences decoded together, one scorer per sequence: CoeScorer(session, first_seq + i, prompts[i].size()).
class CoeScorer {
public:
    CoeScorer(Session& session, llama_seq_id seq, int n_prompt);
    ~CoeScorer();
    CoeScorer(const CoeScorer&) = delete;
    CoeScorer& operator=(const CoeScorer&) = delete;

    const KvCoe& kv() const { return kv_; }
    const HiddenCoe& hidden() const { return hidden_; }
    // Scores now: at the end of a generation, or mid-way (e.g. from GenerateParams::on_token with g.steps).
    CoeResult result(const std::vector<StepStats>& steps) const;
    size_t state_bytes() const { return kv_.state_bytes() + hidden_.state_bytes(); }

private:
    KvCapture& capture_;
    KvCoe kv_;
    HiddenCoe hidden_;
};

}  // namespace kvlens
