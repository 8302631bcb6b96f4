// KV-CoE (method.md section 2): confidence scores from the trajectory of a response's representation, the
// chain h_0 -> h_1 -> ... -> h_N of Chain-of-Embedding (Wang et al., ICLR 2025).
//
// Three chains per generated response, all streamed while the model decodes:
//   - Token-axis KV chain (the paper's KV-CoE, `kv_coe_*`): one state per answer position t,
//     e_t = (1/|S|) sum_{l in S} vec(part(K_l[t], V_l[t])), heads flattened (or averaged), over the selected
//     layers S. States are the producer positions (the last prompt position and every generated token fed
//     back; the last generated token never gets K/V) or the generated tokens only. TokenCoeSpec holds the
//     knobs. Memory: two states of O(width) plus 16 bytes per token (a step's length and angle: CoE-C
//     normalises by the endpoints, known only at the end).
//   - Layer-axis KV chain (`kv_layer_coe_*`, `k_layer_coe_*`, `v_layer_coe_*`; a variant): one state per
//   layer
//     l = 0..L-1, h_l = mean over the producer positions of [K_l[t] ; V_l[t]] (or K or V alone). O(L x
//     width).
//   - Hidden chain (the original CoE, `hs_coe_*`): token embeddings, then the residual stream after each
//     layer, each a mean over the producer positions: L+1 states. O(L x n_embd).
// Every chain can be scored at any decoding step; a score read after k tokens equals the score of the answer
// cut after k tokens.
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
#include "methods/answer_line.h"

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

// ---- the token-axis chain (the paper's KV-CoE), streamed --------------------------------------------------

enum class CoePositions : uint8_t { Producer, Generated };  // "producer" | "generated"
CoePositions parse_coe_positions(const std::string& s);     // else Error naming the value
const char* to_string(CoePositions p);

// The knobs of the token-axis chain. The defaults are the configuration with the highest development-part
// AUROC (CoE-C) among the 48 that `eval coe` scores, on SmolLM2-135M / arith (126 questions; chosen before
// any other model's test part was scored; docs/results/README.md): the last 4 layers, K only, heads
// averaged, producer positions. method.md's reading of the paper (all layers, [K;V], heads flattened) is
// `--coe-layers all --coe-kv-part kv_cat --coe-head-agg flatten`.
struct TokenCoeSpec {
    // parse_layers syntax: "all", "-4..-1", "0,3,-1". "-k..-1" on a model of fewer than k layers: all layers.
    std::string layers = "-4..-1";
    KvPart kv_part = KvPart::K;
    CoePositions positions = CoePositions::Producer;
    HeadAgg head_agg = HeadAgg::Mean;
};
// "layers=all kv_part=kv_cat positions=producer head_agg=flatten"
std::string to_string(const TokenCoeSpec& spec);

// The token-axis chain of one sequence, fed K/V rows as they are computed. A position's state e_t is complete
// once every selected layer's rows (K and/or V) of that position have arrived; complete positions join the
// chain in position order. Keeps e_first and e_last (double), one (length, angle) pair per step, and the
// partial sums of positions still in flight (within one batch).
class TokenCoe : public KvObserver {
public:
    // n_prompt >= 1: the chain starts at position n_prompt - 1 (producer) or n_prompt (generated). Throws
    // Error on a bad layer selection or model shape.
    TokenCoe(const ModelInfo& mi, llama_seq_id seq, int n_prompt, const TokenCoeSpec& spec = {});

    bool wants(Tap tap, int layer) const override;
    void on_rows(const TapRows& rows) override;
    // One K or V row (n_head_kv * head_dim floats) of one layer at one position; rows of unused layers,
    // parts, or positions before the chain's start are ignored. Positions must complete in order.
    void add_row(Tap tap, int layer, llama_pos pos, const float* row);

    int64_t count() const { return n_states_; }  // positions in the chain so far
    int width() const { return width_; }         // floats in one state
    const std::vector<int>& layers() const { return layers_; }
    const TokenCoeSpec& spec() const { return spec_; }
    // Scores of the chain so far: equal (bit for bit) to coe_scores() on the matrix of the states.
    CoeScores scores() const;
    // Bytes held: 2 x width doubles, 16 per step, and positions in flight (vector growth may reserve up to
    // twice the per-step part).
    size_t state_bytes() const;

private:
    struct Pending {
        std::vector<double> sum;
        int rows = 0;
    };
    void complete(std::vector<double>& e);

    TokenCoeSpec spec_;
    llama_seq_id seq_;
    llama_pos pos_begin_;
    int n_head_kv_, head_dim_, part_width_, width_, rows_per_state_;
    std::vector<int> layers_;
    std::vector<bool> uses_layer_;
    std::map<llama_pos, Pending> pending_;
    std::vector<double> first_, last_;
    double sq_first_ = 0, sq_last_ = 0;
    bool zero_norm_ = false;
    int64_t n_states_ = 0;
    std::vector<double> step_dist_, step_angle_;  // raw ||e_{i+1} - e_i|| and angle(e_{i+1}, e_i)
};

// ---- layer-axis chains, streamed --------------------------------------------------------------------------

// The layer-axis KV chain of one sequence: a KvPool (kv_cat, mean over positions, heads flattened, one row
// per layer, all layers) fed the producer positions, pos >= n_prompt - 1. K and V are pooled together; the
// pooled row of a layer is [K ; V], and the K-only and V-only chains are its halves.
//
// Not copyable or movable (the observer refers to the pool). Subscribe observer() to the session's capture
// before the prompt is decoded, or feed pool() directly.
class KvLayerCoe {
public:
    KvLayerCoe(const ModelInfo& mi, llama_seq_id seq, int n_prompt);
    KvLayerCoe(const KvLayerCoe&) = delete;
    KvLayerCoe& operator=(const KvLayerCoe&) = delete;

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
    CoeScores kv;                              // token axis (the paper's KV-CoE), per-step M_i / A_i included
    CoeScores kv_layer, k_layer, v_layer, hs;  // layer axis: K;V, K, V; hidden states
    ProbScores prob;
    AnswerLineScores answer_line{0, 0, 0};  // the output's last line (methods/answer_line.h)
    int64_t n_producer = 0;                 // producer positions pooled (layer-axis and hidden chains)
    int64_t n_generated = 0;                // generated tokens (steps)
    // Every score by name: kv_coe_*, kv_layer_coe_*, k_layer_coe_*, v_layer_coe_*, hs_coe_* (each _r, _c,
    // _mag, _ang), max_prob, inv_ppl, inv_entropy, neg_length (= -n_generated: shorter = more confident),
    // answer_line_prob, answer_line_min_prob.
    std::map<std::string, double> named() const;
};

// Subscribes a TokenCoe (configured by `spec`), a KvLayerCoe and a HiddenCoe for one sequence to a session's
// capture (and unsubscribes on destruction; the session must outlive the scorer). Create it before generate()
// decodes the prompt. For N sequences decoded together, one scorer per sequence: CoeScorer(session, first_seq
// + i, prompts[i].size()).
class CoeScorer {
public:
    CoeScorer(Session& session, llama_seq_id seq, int n_prompt, const TokenCoeSpec& spec = {});
    ~CoeScorer();
    CoeScorer(const CoeScorer&) = delete;
    CoeScorer& operator=(const CoeScorer&) = delete;

    const TokenCoe& token() const { return token_; }
    const KvLayerCoe& kv_layer() const { return kv_; }
    const HiddenCoe& hidden() const { return hidden_; }
    // Scores now: at the end of a generation, or mid-way (e.g. from GenerateParams::on_token with g.steps
    // and g.output); output: the generated tokens so far, one per step (for the answer line).
    CoeResult result(const std::vector<StepStats>& steps, const std::vector<llama_token>& output) const;
    size_t state_bytes() const { return token_.state_bytes() + kv_.state_bytes() + hidden_.state_bytes(); }

private:
    KvCapture& capture_;
    const Model& model_;
    TokenCoe token_;
    KvLayerCoe kv_;
    HiddenCoe hidden_;
};

}  // namespace kvlens
