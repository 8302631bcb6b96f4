#include "methods/coe.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>

#include "util/error.h"

namespace kvlens {

// ---- scores on a chain ------------------------------------------------------------------------------------

std::string coe_status_string(uint32_t status) {
    if (status == kCoeOk) return "ok";
    static const std::pair<uint32_t, const char*> names[] = {{kCoeNoStep, "no_step"},
                                                             {kCoeZeroNorm, "zero_norm"},
                                                             {kCoeEqualEndpoints, "equal_endpoints"},
                                                             {kCoeParallelEndpoints, "parallel_endpoints"}};
    std::string s;
    for (const auto& [flag, name] : names) {
        if (status & flag) s += (s.empty() ? "" : "|") + std::string(name);
    }
    return s;
}

namespace {

const double kPi = std::acos(-1.0);
constexpr double kMaxAbs = 1e150;  // squares and their sums stay far from overflow

void check_shape(const void* h, int n_states, int width) {
    if (n_states < 1 || width < 1 || h == nullptr)
        throw Error("coe: empty chain (" + std::to_string(n_states) + " states of width " +
                    std::to_string(width) + ")");
}

double dot(const double* a, const double* b, int w) {
    double s = 0;
    for (int i = 0; i < w; ++i) s += a[i] * b[i];
    return s;
}

double dist(const double* a, const double* b, int w) {
    double s = 0;
    for (int i = 0; i < w; ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
    return std::sqrt(s);
}

// arccos of the clipped cosine, given the squared norms; 0 when a vector is zero (no direction), and snapped
// to exactly 0 or pi where arccos cannot tell the angle from rounding noise.
double angle(const double* a, const double* b, double aa, double bb, int w) {
    if (aa == 0 || bb == 0) return 0;
    const double cos = std::clamp(dot(a, b, w) / (std::sqrt(aa) * std::sqrt(bb)), -1.0, 1.0);
    const double theta = std::acos(cos);
    if (theta < kCoeAngleSnap) return 0;
    if (theta > kPi - kCoeAngleSnap) return kPi;
    return theta;
}

// The scores from the raw step lengths and angles and the endpoints' distance and angle: the one place the
// formulas live, for the chain as a matrix and for the streamed token-axis chain alike.
CoeScores scores_from_steps(const std::vector<double>& d, const std::vector<double>& a, double endpoint_dist,
                            double endpoint_angle, uint32_t status) {
    CoeScores s;
    const int N = (int)d.size();
    if (N == 0) {
        s.status = kCoeNoStep;  // as for a one-state matrix: nothing else is looked at
        return s;
    }
    s.status = status;
    s.endpoint_dist = endpoint_dist;
    s.endpoint_angle = endpoint_angle;
    double dist_norm = endpoint_dist, angle_norm = endpoint_angle;
    if (dist_norm == 0) {
        dist_norm = 1;
        s.status |= kCoeEqualEndpoints;
    }
    if (angle_norm == 0) {
        angle_norm = 1;
        s.status |= kCoeParallelEndpoints;
    }
    s.m.resize(N);
    s.a.resize(N);
    double sum_m = 0, sum_a = 0, sum_mcos = 0, sum_msin = 0;
    for (int i = 0; i < N; ++i) {
        const double m = d[i] / dist_norm;
        const double an = a[i] / angle_norm;
        s.m[i] = m;
        s.a[i] = an;
        sum_m += m;
        sum_a += an;
        sum_mcos += m * std::cos(an);
        sum_msin += m * std::sin(an);
    }
    s.mag = sum_m / N;
    s.ang = sum_a / N;
    s.r = s.mag - s.ang;
    const double x = sum_mcos / N, y = sum_msin / N;
    s.c = std::sqrt(x * x + y * y);
    return s;
}

}  // namespace

CoeScores coe_scores(const double* h, int n_states, int width) {
    check_shape(h, n_states, width);
    const size_t n_values = (size_t)n_states * width;
    for (size_t j = 0; j < n_values; ++j) {
        if (!(std::fabs(h[j]) <= kMaxAbs))
            throw Error("coe: state " + std::to_string(j / width) +
                        " has a value that is not finite or exceeds " + "1e150 in magnitude (" +
                        std::to_string(h[j]) + ")");
    }

    CoeScores s;
    const int N = n_states - 1;  // steps
    if (N == 0) {
        s.status = kCoeNoStep;
        return s;
    }
    auto row = [&](int i) { return h + (size_t)i * width; };
    std::vector<double> sq(n_states);  // squared norms
    for (int i = 0; i < n_states; ++i) {
        sq[i] = dot(row(i), row(i), width);
        if (sq[i] == 0) s.status |= kCoeZeroNorm;
    }

    std::vector<double> d(N), a(N);
    for (int i = 0; i < N; ++i) {
        d[i] = dist(row(i + 1), row(i), width);
        a[i] = angle(row(i + 1), row(i), sq[i + 1], sq[i], width);
    }
    return scores_from_steps(d, a, dist(row(N), row(0), width), angle(row(N), row(0), sq[N], sq[0], width),
                             s.status);
}

CoeScores coe_scores(const float* h, int n_states, int width) {
    check_shape(h, n_states, width);
    const std::vector<double> d(h, h + (size_t)n_states * width);
    return coe_scores(d.data(), n_states, width);
}

// ---- token-axis KV chain
// ---------------------------------------------------------------------------------------------

namespace {

// First producer position: the last prompt position.
llama_pos producer_begin(int n_prompt) {
    if (n_prompt < 1) throw Error("coe: n_prompt " + std::to_string(n_prompt) + " must be >= 1");
    return n_prompt - 1;
}

PoolSpec coe_pool_spec() {
    PoolSpec spec;
    spec.kv_part = KvPart::KV;
    spec.pos_agg = PosAgg::Mean;
    spec.head_agg = HeadAgg::Flatten;
    spec.layer_agg = LayerAgg::None;
    return spec;  // all layers, no window, no normalisation
}

}  // namespace

CoePositions parse_coe_positions(const std::string& s) {
    if (s == "producer") return CoePositions::Producer;
    if (s == "generated") return CoePositions::Generated;
    throw Error("positions: bad value '" + s + "' (expected producer or generated)");
}

const char* to_string(CoePositions p) {
    return p == CoePositions::Producer ? "producer" : "generated";
}

std::string to_string(const TokenCoeSpec& spec) {
    return "layers=" + spec.layers + " kv_part=" + to_string(spec.kv_part) +
           " positions=" + to_string(spec.positions) + " head_agg=" + to_string(spec.head_agg);
}

TokenCoe::TokenCoe(const ModelInfo& mi, llama_seq_id seq, int n_prompt, const TokenCoeSpec& spec)
    : spec_(spec),
      seq_(seq),
      pos_begin_(producer_begin(n_prompt) + (spec.positions == CoePositions::Generated ? 1 : 0)),
      n_head_kv_(mi.n_head_kv),
      head_dim_(mi.head_dim) {
    if (mi.n_layer < 1 || mi.n_head_kv < 1 || mi.head_dim < 1)
        throw Error("coe: bad model shape (n_layer " + std::to_string(mi.n_layer) + ", n_head_kv " +
                    std::to_string(mi.n_head_kv) + ", head_dim " + std::to_string(mi.head_dim) + ")");
    // "The last k layers" ("-k..-1") means all of them on a model with fewer: the default works everywhere.
    std::vector<int> given = parse_layers(spec.layers);
    bool last_k = !given.empty() && given.back() == -1;
    for (size_t i = 0; i + 1 < given.size(); ++i) last_k = last_k && given[i] + 1 == given[i + 1];
    if (last_k && (int)given.size() > mi.n_layer) given.erase(given.begin(), given.end() - mi.n_layer);
    layers_ = resolve_layers(given, mi.n_layer);
    uses_layer_.assign(mi.n_layer, false);
    for (int l : layers_) uses_layer_[l] = true;
    part_width_ = spec.head_agg == HeadAgg::Flatten ? mi.kv_width() : mi.head_dim;
    const int n_parts = spec.kv_part == KvPart::KV ? 2 : 1;
    width_ = n_parts * part_width_;
    rows_per_state_ = n_parts * (int)layers_.size();
}

bool TokenCoe::wants(Tap tap, int layer) const {
    if (layer < 0 || layer >= (int)uses_layer_.size() || !uses_layer_[layer]) return false;
    if (tap == Tap::K) return spec_.kv_part != KvPart::V;
    if (tap == Tap::V) return spec_.kv_part != KvPart::K;
    return false;
}

void TokenCoe::on_rows(const TapRows& rows) {
    // Runs inside llama.cpp's eval callback: rows of an unexpected width (never seen) are dropped rather
    // than throwing through C code; the chain then misses that position, which count() shows.
    if (rows.width != n_head_kv_ * head_dim_) return;
    for (int i = 0; i < rows.n_rows; ++i)
        if (rows.has_seq(i, seq_)) add_row(rows.tap, rows.layer, rows.pos(i), rows.row(i));
}

void TokenCoe::add_row(Tap tap, int layer, llama_pos pos, const float* row) {
    if (pos < pos_begin_ || !wants(tap, layer)) return;
    Pending& p = pending_[pos];
    if (p.sum.empty()) p.sum.assign(width_, 0.0);
    // [K ; V] for kv_cat; the part's own row otherwise. Heads flattened, or averaged.
    double* out = p.sum.data() + (spec_.kv_part == KvPart::KV && tap == Tap::V ? part_width_ : 0);
    if (spec_.head_agg == HeadAgg::Flatten) {
        for (int j = 0; j < part_width_; ++j) out[j] += row[j];
    } else {
        for (int h = 0; h < n_head_kv_; ++h)
            for (int j = 0; j < head_dim_; ++j) out[j] += (double)row[h * head_dim_ + j] / n_head_kv_;
    }
    ++p.rows;
    // Complete positions join the chain in order (all rows of a batch arrive before the next batch's).
    while (!pending_.empty() && pending_.begin()->second.rows == rows_per_state_) {
        auto it = pending_.begin();
        complete(it->second.sum);
        pending_.erase(it);
    }
}

void TokenCoe::complete(std::vector<double>& e) {
    const double n = (double)layers_.size();
    for (double& x : e) x /= n;
    const double sq = dot(e.data(), e.data(), width_);
    if (sq == 0) zero_norm_ = true;
    if (n_states_ == 0) {
        first_ = e;
        sq_first_ = sq;
    } else {
        step_dist_.push_back(dist(e.data(), last_.data(), width_));
        step_angle_.push_back(angle(e.data(), last_.data(), sq, sq_last_, width_));
    }
    last_.swap(e);
    sq_last_ = sq;
    ++n_states_;
}

CoeScores TokenCoe::scores() const {
    if (n_states_ < 2) {
        CoeScores s;
        s.status = kCoeNoStep;
        return s;
    }
    return scores_from_steps(step_dist_, step_angle_, dist(last_.data(), first_.data(), width_),
                             angle(last_.data(), first_.data(), sq_last_, sq_first_, width_),
                             zero_norm_ ? kCoeZeroNorm : kCoeOk);
}

size_t TokenCoe::state_bytes() const {
    size_t b = (first_.size() + last_.size()) * sizeof(double) +
               (step_dist_.size() + step_angle_.size()) * sizeof(double);
    for (const auto& [pos, p] : pending_) b += p.sum.size() * sizeof(double);
    return b;
}

// ---- layer-axis KV chain ----------------------------------------------------------------------------------

KvLayerCoe::KvLayerCoe(const ModelInfo& mi, llama_seq_id seq, int n_prompt)
    : pool_(coe_pool_spec(), mi.n_layer, mi.n_head_kv, mi.head_dim),
      observer_(pool_, seq, producer_begin(n_prompt)) {}

Chain KvLayerCoe::chain(KvPart part) const {
    const Pooled p = pool_.result();  // one [K ; V] row per layer
    const int half = p.width / 2;
    const int begin = part == KvPart::V ? half : 0;
    Chain ch;
    ch.n_states = p.n_vectors;
    ch.width = part == KvPart::KV ? p.width : half;
    ch.data.reserve((size_t)ch.n_states * ch.width);
    for (int l = 0; l < p.n_vectors; ++l)
        ch.data.insert(ch.data.end(), p.row(l) + begin, p.row(l) + begin + ch.width);
    return ch;
}

// ---- hidden-state chain -----------------------------------------------------------------------------------

HiddenCoe::HiddenCoe(const ModelInfo& mi, llama_seq_id seq, int n_prompt)
    : n_layer_(mi.n_layer), n_embd_(mi.n_embd), seq_(seq), pos_begin_(producer_begin(n_prompt)) {
    if (n_layer_ < 1 || n_embd_ < 1)
        throw Error("coe: bad model shape (n_layer " + std::to_string(n_layer_) + ", n_embd " +
                    std::to_string(n_embd_) + ")");
    sum_.assign((size_t)(n_layer_ + 1) * n_embd_, 0.0);
    count_.assign(n_layer_ + 1, 0);
}

bool HiddenCoe::wants(Tap tap, int layer) const {
    return tap == Tap::Embd || (tap == Tap::Hidden && layer >= 0 && layer < n_layer_);
}

void HiddenCoe::on_rows(const TapRows& rows) {
    // Runs inside llama.cpp's eval callback, where an exception must not escape: rows of an unexpected width
    // (never seen in llama.cpp graphs) are dropped, and the state counts then show it.
    if (rows.width != n_embd_) return;
    const int layer = rows.tap == Tap::Embd ? -1 : rows.layer;
    for (int i = 0; i < rows.n_rows; ++i) {
        if (rows.pos(i) >= pos_begin_ && rows.has_seq(i, seq_)) add_row(layer, rows.row(i));
    }
}

void HiddenCoe::add_row(int layer, const float* row) {
    if (layer < -1 || layer >= n_layer_)
        throw Error("coe: hidden layer " + std::to_string(layer) + " out of range for a " +
                    std::to_string(n_layer_) + "-layer model");
    double* sum = sum_.data() + (size_t)(layer + 1) * n_embd_;
    for (int i = 0; i < n_embd_; ++i) sum[i] += row[i];
    ++count_[layer + 1];
}

Chain HiddenCoe::chain() const {
    Chain ch;
    ch.n_states = n_layer_ + 1;
    ch.width = n_embd_;
    ch.data.assign(sum_.size(), 0.0);
    for (int s = 0; s < ch.n_states; ++s) {
        if (count_[s] == 0) continue;
        for (int i = 0; i < n_embd_; ++i) {
            const size_t j = (size_t)s * n_embd_ + i;
            ch.data[j] = sum_[j] / (double)count_[s];
        }
    }
    return ch;
}

size_t HiddenCoe::state_bytes() const {
    return sum_.size() * sizeof(double) + count_.size() * sizeof(int64_t);
}

size_t hidden_trajectory_bytes(int n_layer, int n_embd, int64_t n_tokens) {
    return (size_t)(n_layer + 1) * (size_t)n_embd * sizeof(float) * (size_t)n_tokens;
}

// ---- output-probability baselines -------------------------------------------------------------------------

ProbScores prob_scores(const std::vector<StepStats>& steps) {
    ProbScores p;
    if (steps.empty()) return p;
    double max_prob = 0, log_prob = 0, entropy = 0;
    for (const StepStats& s : steps) {
        max_prob += s.max_prob;
        // A probability that underflowed in float is still > 0: floor it rather than take log(0).
        log_prob += std::log(std::max((double)s.prob, (double)FLT_TRUE_MIN));
        entropy += s.entropy;
    }
    const double n = (double)steps.size();
    p.max_prob = max_prob / n;
    p.inv_ppl = std::exp(log_prob / n);
    p.inv_entropy = 1.0 / std::max(entropy / n, kCoeMinEntropy);
    return p;
}

// ---- everything for one sequence --------------------------------------------------------------------------

std::map<std::string, double> CoeResult::named() const {
    std::map<std::string, double> out;
    const std::pair<const char*, const CoeScores*> chains[] = {
        {"kv", &kv}, {"kv_layer", &kv_layer}, {"k_layer", &k_layer}, {"v_layer", &v_layer}, {"hs", &hs}};
    for (const auto& [name, s] : chains) {
        const std::string p = std::string(name) + "_coe_";
        out[p + "r"] = s->r;
        out[p + "c"] = s->c;
        out[p + "mag"] = s->mag;
        out[p + "ang"] = s->ang;
    }
    out["max_prob"] = prob.max_prob;
    out["inv_ppl"] = prob.inv_ppl;
    out["inv_entropy"] = prob.inv_entropy;
    out["neg_length"] = -(double)n_generated;
    out["answer_line_prob"] = answer_line.prob;
    out["answer_line_min_prob"] = answer_line.min_prob;
    return out;
}

CoeScorer::CoeScorer(Session& session, llama_seq_id seq, int n_prompt, const TokenCoeSpec& spec)
    : capture_(session.capture()),
      model_(session.model()),
      token_(session.model().info(), seq, n_prompt, spec),
      kv_(session.model().info(), seq, n_prompt),
      hidden_(session.model().info(), seq, n_prompt) {
    capture_.subscribe(&token_);
    capture_.subscribe(&kv_.observer());
    capture_.subscribe(&hidden_);
}

CoeScorer::~CoeScorer() {
    capture_.unsubscribe(&token_);
    capture_.unsubscribe(&kv_.observer());
    capture_.unsubscribe(&hidden_);
}

CoeResult CoeScorer::result(const std::vector<StepStats>& steps,
                            const std::vector<llama_token>& output) const {
    CoeResult r;
    std::vector<std::string> pieces;
    for (llama_token t : output) pieces.push_back(model_.detokenize({t}));
    r.answer_line = answer_line_scores(pieces, steps);
    r.kv = token_.scores();
    r.kv_layer = kv_.scores(KvPart::KV);
    r.k_layer = kv_.scores(KvPart::K);
    r.v_layer = kv_.scores(KvPart::V);
    r.hs = hidden_.scores();
    r.prob = prob_scores(steps);
    r.n_producer = kv_.count();
    r.n_generated = (int64_t)steps.size();
    return r;
}

}  // namespace kvlens
