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

    s.endpoint_dist = dist(row(N), row(0), width);
    s.endpoint_angle = angle(row(N), row(0), sq[N], sq[0], width);
    double dist_norm = s.endpoint_dist, angle_norm = s.endpoint_angle;
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
        const double m = dist(row(i + 1), row(i), width) / dist_norm;
        const double a = angle(row(i + 1), row(i), sq[i + 1], sq[i], width) / angle_norm;
        s.m[i] = m;
        s.a[i] = a;
        sum_m += m;
        sum_a += a;
        sum_mcos += m * std::cos(a);
        sum_msin += m * std::sin(a);
    }
    s.mag = sum_m / N;
    s.ang = sum_a / N;
    s.r = s.mag - s.ang;
    const double x = sum_mcos / N, y = sum_msin / N;
    s.c = std::sqrt(x * x + y * y);
    return s;
}

CoeScores coe_scores(const float* h, int n_states, int width) {
    check_shape(h, n_states, width);
    const std::vector<double> d(h, h + (size_t)n_states * width);
    return coe_scores(d.data(), n_states, width);
}

// ---- KV chain ---------------------------------------------------------------------------------------------

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

KvCoe::KvCoe(const ModelInfo& mi, llama_seq_id seq, int n_prompt)
    : pool_(coe_pool_spec(), mi.n_layer, mi.n_head_kv, mi.head_dim),
      observer_(pool_, seq, producer_begin(n_prompt)) {}

Chain KvCoe::chain(KvPart part) const {
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
        {"kv", &kv}, {"k", &k}, {"v", &v}, {"hs", &hs}};
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
    return out;
}

CoeScorer::CoeScorer(Session& session, llama_seq_id seq, int n_prompt)
    : capture_(session.capture()),
      kv_(session.model().info(), seq, n_prompt),
      hidden_(session.model().info(), seq, n_prompt) {
    capture_.subscribe(&kv_.observer());
    capture_.subscribe(&hidden_);
}

CoeScorer::~CoeScorer() {
    capture_.unsubscribe(&kv_.observer());
    capture_.unsubscribe(&hidden_);
}

CoeResult CoeScorer::result(const std::vector<StepStats>& steps) const {
    CoeResult r;
    r.kv = kv_.scores(KvPart::KV);
    r.k = kv_.scores(KvPart::K);
    r.v = kv_.scores(KvPart::V);
    r.hs = hidden_.scores();
    r.prob = prob_scores(steps);
    r.n_producer = kv_.count();
    return r;
}

}  // namespace kvlens
