#include "methods/router.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "util/error.h"
#include "util/json_num.h"

namespace kvlens {

using nlohmann::json;

// ---- labels, features, presets --------------------------------------------------------------------------

int difficulty_label(bool fast_correct, int fast_tokens, bool slow_correct, int long_tokens) {
    if (fast_tokens < 0) throw Error("difficulty label: fast_tokens " + std::to_string(fast_tokens) + " < 0");
    if (long_tokens < 1) throw Error("difficulty label: long_tokens " + std::to_string(long_tokens) + " < 1");
    if (fast_correct) return fast_tokens < long_tokens ? 0 : 25;
    return slow_correct ? 75 : 100;
}

RouterFeatures parse_router_preset(const std::string& s) {
    if (s == "32/8") return {32, 8};
    if (s == "64/4") return {64, 4};
    if (s == "128/2") return {128, 2};
    throw Error("router features: unknown preset '" + s +
                "' (expected 32/8, 64/4 or 128/2: seq_len/n_layers)");
}

std::string to_string(const RouterFeatures& f) {
    return std::to_string(f.seq_len) + "/" + std::to_string(f.n_layers);
}

PoolSpec router_pool_spec(const RouterFeatures& f, int model_n_layer) {
    if (f.seq_len < 1 || f.n_layers < 1)
        throw Error("router features: seq_len and n_layers must be >= 1 (have " + to_string(f) + ")");
    if (model_n_layer < 1)
        throw Error("router features: model has " + std::to_string(model_n_layer) + " layers");
    PoolSpec s;
    s.kv_part = KvPart::KV;
    s.pos_agg = PosAgg::Sum;
    s.head_agg = HeadAgg::Flatten;
    s.layer_agg = LayerAgg::Mean;
    s.window = f.seq_len;
    const int n = std::min(f.n_layers, model_n_layer);
    for (int l = -n; l < 0; ++l) s.layers.push_back(l);
    return s;
}

int router_feature_width(int n_head_kv, int head_dim) {
    return 2 * n_head_kv * head_dim;
}

RouterTrainParams router_train_preset(const std::string& name) {
    RouterTrainParams p;  // the defaults are "tuned"
    if (name == "tuned") return p;
    if (name != "paper")
        throw Error("router training: unknown preset '" + name + "' (expected paper or tuned)");
    p.preset = "paper";
    p.lr = 1e-5;
    p.batch = 1024;
    p.epochs = 100;
    p.patience = 0;
    p.restore_best = false;
    p.weight_decay = 0;
    p.standardize = false;
    p.target_scale = 1;
    return p;
}

// ---- MLP kernels ----------------------------------------------------------------------------------------
//
// Plain loops shaped for the compiler: input rows in chunks of kRows (transposed, so that one input's values
// for the chunk are contiguous), hidden units in register blocks of kBlock rows x 16 units held over the
// whole inner loop, threads on disjoint ranges of hidden units. Every pre-activation is accumulated in the
// same order (bias, then inputs 0..n_in-1), and every w1 gradient over rows in ascending order, whatever the
// batch size or the number of threads: predict() on one row equals the batched forward pass, and training
// is reproducible for a seed.

namespace {

constexpr int kRows = 64;  // rows per transposed chunk
constexpr int kCols = 64;  // hidden units per thread work unit

// With GCC 12+ on x86-64 Linux the hot loops also get an AVX2+FMA version (x86-64-v3), chosen at load time
// by CPU features (the build targets plain x86-64). A machine always runs the same version, so its results
// are reproducible; two machines may differ in the last bits.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__)
#define KVLENS_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define KVLENS_HOT
#endif

// The input rows in chunks of kRows, each chunk transposed (xt[k][r]), so that a tile reads its rows'
// values for one input contiguously (rows of x lie n_in floats apart: same cache set, TLB misses).
std::vector<float> chunk_transpose(const float* x, int n, int F) {
    std::vector<float> xt((size_t)n * F);
    for (int r0 = 0; r0 < n; r0 += kRows) {
        const int rn = std::min(kRows, n - r0);
        float* c = xt.data() + (size_t)r0 * F;
        for (int r = 0; r < rn; ++r)
            for (int k = 0; k < F; ++k) c[(size_t)k * rn + r] = x[(size_t)(r0 + r) * F + k];
    }
    return xt;
}

// Register blocks: R rows (or R inputs) x kStrip hidden units held in registers over the whole inner loop.
constexpr int kStrip = 16;
constexpr int kBlock = 4;

#if defined(__GNUC__)
#define KVLENS_INLINE inline __attribute__((always_inline))
#else
#define KVLENS_INLINE inline
#endif

#if defined(__GNUC__)
// 8 floats; unaligned, may alias the float arrays. The compiler splits it where the target has no AVX.
// Loads and stores are macros: a function taking or returning V8 draws -Wpsabi (its ABI depends on AVX).
typedef float V8 __attribute__((vector_size(32), aligned(4), may_alias));
#define load8(p) (*reinterpret_cast<const V8*>(p))
#define store8(p, v) (*reinterpret_cast<V8*>(p) = (v))
#else
struct V8 {
    float v[8];
    V8& operator+=(const V8& o) {
        for (int i = 0; i < 8; ++i) v[i] += o.v[i];
        return *this;
    }
};
inline V8 operator*(float a, const V8& b) {
    V8 r;
    for (int i = 0; i < 8; ++i) r.v[i] = a * b.v[i];
    return r;
}
inline V8 load8(const float* p) {
    V8 r;
    std::copy_n(p, 8, r.v);
    return r;
}
inline void store8(float* p, V8 v) {
    std::copy_n(v.v, 8, p);
}
#endif
static_assert(kStrip == 16, "the register blocks below hold two 8-float vectors per row");

// z[r..r+R)[c..c+16) += sum_k xt[k][r..] * w1[k][c..]; xc is the transposed chunk of rn rows.
template <int R>
KVLENS_INLINE void pre_block(const float* w1, int F, int H, const float* xc, int rn, int r, float* z, int c) {
    V8 acc[R][2];
    for (int q = 0; q < R; ++q) {
        acc[q][0] = load8(z + (size_t)(r + q) * H + c);
        acc[q][1] = load8(z + (size_t)(r + q) * H + c + 8);
    }
    for (int k = 0; k < F; ++k) {
        const V8 w0 = load8(w1 + (size_t)k * H + c), w8 = load8(w1 + (size_t)k * H + c + 8);
        const float* xk = xc + (size_t)k * rn + r;
        for (int q = 0; q < R; ++q) {
            acc[q][0] += xk[q] * w0;
            acc[q][1] += xk[q] * w8;
        }
    }
    for (int q = 0; q < R; ++q) {
        store8(z + (size_t)(r + q) * H + c, acc[q][0]);
        store8(z + (size_t)(r + q) * H + c + 8, acc[q][1]);
    }
}

// g[k..k+R)[c..c+16) += sum_r xt[k..][r] * dz[r][c..], rows ascending.
template <int R>
KVLENS_INLINE void grad_block(float* g, int H, const float* xc, int rn, int k, const float* dz, int c) {
    V8 acc[R][2];
    for (int q = 0; q < R; ++q) {
        acc[q][0] = load8(g + (size_t)(k + q) * H + c);
        acc[q][1] = load8(g + (size_t)(k + q) * H + c + 8);
    }
    for (int r = 0; r < rn; ++r) {
        const V8 d0 = load8(dz + (size_t)r * H + c), d8 = load8(dz + (size_t)r * H + c + 8);
        for (int q = 0; q < R; ++q) {
            const float a = xc[(size_t)(k + q) * rn + r];
            acc[q][0] += a * d0;
            acc[q][1] += a * d8;
        }
    }
    for (int q = 0; q < R; ++q) {
        store8(g + (size_t)(k + q) * H + c, acc[q][0]);
        store8(g + (size_t)(k + q) * H + c + 8, acc[q][1]);
    }
}

// Column remainders (fewer than 16 hidden units left), scalar, same accumulation orders.
KVLENS_INLINE void pre_rest(const float* w1, int F, int H, const float* xc, int rn, int r, float* z, int c) {
    float acc = z[(size_t)r * H + c];
    for (int k = 0; k < F; ++k) acc += xc[(size_t)k * rn + r] * w1[(size_t)k * H + c];
    z[(size_t)r * H + c] = acc;
}
KVLENS_INLINE void grad_rest(float* g, int H, const float* xc, int rn, int k, const float* dz, int c) {
    float acc = g[(size_t)k * H + c];
    for (int r = 0; r < rn; ++r) acc += xc[(size_t)k * rn + r] * dz[(size_t)r * H + c];
    g[(size_t)k * H + c] = acc;
}

// z[r][j0..j1) += sum_k x[r][k] w1[k][j0..j1), rows [0, n); xt from chunk_transpose.
KVLENS_HOT void pre_cols(const float* w1, int F, int H, const float* xt, int n, float* z, int j0, int j1) {
    for (int r0 = 0; r0 < n; r0 += kRows) {
        const int rn = std::min(kRows, n - r0);
        const float* xc = xt + (size_t)r0 * F;
        float* zc = z + (size_t)r0 * H;
        int c = j0;
        for (; c + kStrip <= j1; c += kStrip) {
            int r = 0;
            for (; r + kBlock <= rn; r += kBlock) pre_block<kBlock>(w1, F, H, xc, rn, r, zc, c);
            for (; r < rn; ++r) pre_block<1>(w1, F, H, xc, rn, r, zc, c);
        }
        for (; c < j1; ++c)
            for (int r = 0; r < rn; ++r) pre_rest(w1, F, H, xc, rn, r, zc, c);
    }
}

// g[k][j0..j1) += sum_r x[r][k] dz[r][j0..j1), rows [0, n) ascending; xt from chunk_transpose.
KVLENS_HOT void grad_cols(float* g, int F, int H, const float* xt, int n, const float* dz, int j0, int j1) {
    for (int r0 = 0; r0 < n; r0 += kRows) {
        const int rn = std::min(kRows, n - r0);
        const float* xc = xt + (size_t)r0 * F;
        const float* dc = dz + (size_t)r0 * H;
        int c = j0;
        for (; c + kStrip <= j1; c += kStrip) {
            int k = 0;
            for (; k + kBlock <= F; k += kBlock) grad_block<kBlock>(g, H, xc, rn, k, dc, c);
            for (; k < F; ++k) grad_block<1>(g, H, xc, rn, k, dc, c);
        }
        for (; c < j1; ++c)
            for (int k = 0; k < F; ++k) grad_rest(g, H, xc, rn, k, dc, c);
    }
}

// 0: all hardware threads.
int resolve_threads(int threads) {
    return threads > 0 ? threads : std::max(1, (int)std::thread::hardware_concurrency());
}

// fn(i) for i in [0, t), on t threads (the calling one included).
template <typename Fn>
void run_parallel(int t, Fn fn) {
    std::vector<std::thread> pool;
    for (int i = 1; i < t; ++i) pool.emplace_back([&fn, i] { fn(i); });
    fn(0);
    for (std::thread& th : pool) th.join();
}

// fn(j0, j1) over ranges of hidden units (whole work units), on up to `threads` threads when there are at
// least ~4M multiply-adds per thread (a thread start costs tens of microseconds).
template <typename Fn>
void over_columns(int H, int threads, double work, Fn fn) {
    const int units = (H + kCols - 1) / kCols;
    const int t = std::max(1, std::min({threads, units, (int)(work / 4e6)}));
    run_parallel(
        t, [&](int i) { fn(std::min(H, units * i / t * kCols), std::min(H, units * (i + 1) / t * kCols)); });
}

// z[r][j] = b1[j] + sum_k x[r][k] w1[k][j], rows [0, n).
void hidden_pre(const MlpWeights& w, const float* x, int n, float* z, int threads) {
    const int F = w.n_in, H = w.n_hidden;
    for (int r = 0; r < n; ++r) std::copy(w.b1.begin(), w.b1.end(), z + (size_t)r * H);
    const std::vector<float> xt = chunk_transpose(x, n, F);
    over_columns(H, threads, (double)n * F * H,
                 [&](int j0, int j1) { pre_cols(w.w1.data(), F, H, xt.data(), n, z, j0, j1); });
}

// Output of one row from its pre-activations (sum in double: hundreds of terms of mixed sign).
inline float output_of(const MlpWeights& w, const float* z) {
    double o = w.b2;
    for (int j = 0; j < w.n_hidden; ++j)
        if (z[j] > 0) o += (double)z[j] * w.w2[j];
    return (float)o;
}

void check_shape(const MlpWeights& w) {
    if (w.n_in < 1 || w.n_hidden < 1 || w.w1.size() != (size_t)w.n_in * w.n_hidden ||
        w.b1.size() != (size_t)w.n_hidden || w.w2.size() != (size_t)w.n_hidden)
        throw Error("router MLP: inconsistent weight shapes");
}

MlpWeights zeros_like(const MlpWeights& w) {
    MlpWeights z;
    z.n_in = w.n_in;
    z.n_hidden = w.n_hidden;
    z.w1.assign(w.w1.size(), 0.f);
    z.b1.assign(w.b1.size(), 0.f);
    z.w2.assign(w.w2.size(), 0.f);
    return z;
}

// Uniform in [-bound, bound) from 24 random bits (exact in float, the same on every platform, unlike
// std::uniform_real_distribution).
inline float uniform(std::mt19937_64& rng, double bound) {
    const double u = (double)(rng() >> 40) * (1.0 / 16777216.0);
    return (float)(bound * (2 * u - 1));
}

// Fisher-Yates with the raw generator (std::shuffle's algorithm is implementation-defined).
void shuffle(std::vector<int>& v, std::mt19937_64& rng) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
}

}  // namespace

MlpWeights mlp_init(int n_in, int n_hidden, uint64_t seed) {
    if (n_in < 1 || n_hidden < 1)
        throw Error("router MLP: bad size " + std::to_string(n_in) + " x " + std::to_string(n_hidden));
    MlpWeights w;
    w.n_in = n_in;
    w.n_hidden = n_hidden;
    w.w1.resize((size_t)n_in * n_hidden);
    w.b1.resize(n_hidden);
    w.w2.resize(n_hidden);
    std::mt19937_64 rng(seed);
    // Drawn in torch's order (weight[j][k] row-major, then bias), stored input-major.
    const double bound1 = 1 / std::sqrt((double)n_in), bound2 = 1 / std::sqrt((double)n_hidden);
    for (int j = 0; j < n_hidden; ++j)
        for (int k = 0; k < n_in; ++k) w.w1[(size_t)k * n_hidden + j] = uniform(rng, bound1);
    for (float& b : w.b1) b = uniform(rng, bound1);
    for (float& v : w.w2) v = uniform(rng, bound2);
    w.b2 = uniform(rng, bound2);
    return w;
}

void mlp_forward(const MlpWeights& w, const float* x, int n, float* out, int threads) {
    check_shape(w);
    const int rows = std::min(n, 1024);  // bounded scratch
    std::vector<float> z((size_t)rows * w.n_hidden);
    for (int r0 = 0; r0 < n; r0 += rows) {
        const int rn = std::min(rows, n - r0);
        hidden_pre(w, x + (size_t)r0 * w.n_in, rn, z.data(), threads);
        for (int r = 0; r < rn; ++r) out[r0 + r] = output_of(w, z.data() + (size_t)r * w.n_hidden);
    }
}

double mlp_loss_grad(const MlpWeights& w, const float* x, const float* y, int n, MlpWeights* grad,
                     int threads) {
    check_shape(w);
    if (n < 1) throw Error("router MLP: empty minibatch");
    const int F = w.n_in, H = w.n_hidden;
    std::vector<float> z((size_t)n * H);
    hidden_pre(w, x, n, z.data(), threads);
    double loss = 0;
    std::vector<double> gw2(grad ? H : 0), gb1(grad ? H : 0);
    double gb2 = 0;
    for (int r = 0; r < n; ++r) {
        float* zr = z.data() + (size_t)r * H;
        const double res = (double)output_of(w, zr) - y[r];
        loss += res * res;
        if (!grad) continue;
        const float g = (float)(2 * res / n);  // d loss / d output
        gb2 += g;
        for (int j = 0; j < H; ++j) {
            // zr becomes d loss / d pre-activation.
            if (zr[j] > 0) {
                gw2[j] += (double)g * zr[j];
                zr[j] = g * w.w2[j];
                gb1[j] += zr[j];
            } else {
                zr[j] = 0;
            }
        }
    }
    if (grad) {
        // assign() keeps the storage of a gradient reused across steps (4 MB for 2048 x 512).
        grad->n_in = F;
        grad->n_hidden = H;
        grad->w1.assign(w.w1.size(), 0.f);
        grad->b1.assign(H, 0.f);
        grad->w2.assign(H, 0.f);
        for (int j = 0; j < H; ++j) {
            grad->w2[j] = (float)gw2[j];
            grad->b1[j] = (float)gb1[j];
        }
        grad->b2 = (float)gb2;
        const std::vector<float> xt = chunk_transpose(x, n, F);
        over_columns(H, threads, (double)n * F * H, [&](int j0, int j1) {
            grad_cols(grad->w1.data(), F, H, xt.data(), n, z.data(), j0, j1);
        });
    }
    return loss / n;
}

namespace {

KVLENS_HOT void adam_update(float* w, const float* g, float* m, float* v, size_t n, float b1, float b2,
                            float step, float bc2_sqrt, float eps, float decay) {
    for (size_t i = 0; i < n; ++i) {
        w[i] *= decay;
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        w[i] -= step * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps);
    }
}

}  // namespace

void adam_step(MlpWeights& w, const MlpWeights& grad, AdamState& s, const RouterTrainParams& p) {
    check_shape(w);
    if (grad.w1.size() != w.w1.size() || grad.b1.size() != w.b1.size() || grad.w2.size() != w.w2.size())
        throw Error("router MLP: gradient shape differs from the weights");
    if (s.t == 0) {
        s.m = zeros_like(w);
        s.v = zeros_like(w);
    }
    ++s.t;
    const double bc1 = 1 - std::pow(p.beta1, (double)s.t), bc2 = 1 - std::pow(p.beta2, (double)s.t);
    const float b1 = (float)p.beta1, b2 = (float)p.beta2, step = (float)(p.lr / bc1);
    const float bc2s = (float)std::sqrt(bc2), eps = (float)p.eps, decay = (float)(1 - p.lr * p.weight_decay);
    // w1 (memory-bound, millions of values) in slices of whole 64-float blocks on the training threads.
    const size_t n1 = w.w1.size(), blocks = (n1 + 63) / 64;
    const int t =
        std::max(1, (int)std::min<size_t>({(size_t)resolve_threads(p.threads), blocks, n1 / 262144 + 1}));
    run_parallel(t, [&](int i) {
        const size_t a = std::min(n1, blocks * i / t * 64), b = std::min(n1, blocks * (i + 1) / t * 64);
        adam_update(w.w1.data() + a, grad.w1.data() + a, s.m.w1.data() + a, s.v.w1.data() + a, b - a, b1, b2,
                    step, bc2s, eps, decay);
    });
    adam_update(w.w2.data(), grad.w2.data(), s.m.w2.data(), s.v.w2.data(), w.w2.size(), b1, b2, step, bc2s,
                eps, decay);
    adam_update(w.b1.data(), grad.b1.data(), s.m.b1.data(), s.v.b1.data(), w.b1.size(), b1, b2, step, bc2s,
                eps, 1.f);
    adam_update(&w.b2, &grad.b2, &s.m.b2, &s.v.b2, 1, b1, b2, step, bc2s, eps, 1.f);
}

// ---- classifier -----------------------------------------------------------------------------------------

namespace {

// (x - mean) / sd, the one formula used at training and at inference time.
inline void standardise(const KvClassifier& c, const float* x, float* out) {
    const int F = c.n_features();
    if (c.mean.empty()) {
        std::copy(x, x + F, out);
        return;
    }
    for (int k = 0; k < F; ++k) out[k] = (x[k] - c.mean[k]) / c.sd[k];
}

}  // namespace

float KvClassifier::predict(const float* features) const {
    float out;
    predict(features, 1, &out);
    return out;
}

void KvClassifier::predict(const float* x, int n, float* out) const {
    check_shape(net);
    const int F = n_features();
    std::vector<float> xs((size_t)std::min(n, kRows) * F);
    for (int r0 = 0; r0 < n; r0 += kRows) {
        const int rn = std::min(kRows, n - r0);
        for (int r = 0; r < rn; ++r) standardise(*this, x + (size_t)(r0 + r) * F, xs.data() + (size_t)r * F);
        mlp_forward(net, xs.data(), rn, out + r0);
        for (int r = 0; r < rn; ++r) out[r0 + r] *= out_scale;
    }
}

// ---- training -------------------------------------------------------------------------------------------

namespace {

void check_params(const RouterTrainParams& p) {
    auto bad = [](const std::string& what) { return Error("router training: " + what); };
    if (p.hidden < 1) throw bad("hidden must be >= 1");
    if (!(p.lr > 0) || !std::isfinite(p.lr)) throw bad("lr must be > 0");
    if (p.batch < 1) throw bad("batch must be >= 1");
    if (p.epochs < 1) throw bad("epochs must be >= 1");
    if (p.patience < 0) throw bad("patience must be >= 0");
    if (!(p.weight_decay >= 0) || p.lr * p.weight_decay >= 1) throw bad("weight_decay must be in [0, 1/lr)");
    if (!(p.beta1 >= 0 && p.beta1 < 1) || !(p.beta2 >= 0 && p.beta2 < 1))
        throw bad("betas must be in [0, 1)");
    if (!(p.eps > 0)) throw bad("eps must be > 0");
    if (!(p.target_scale > 0) || !std::isfinite(p.target_scale)) throw bad("target_scale must be > 0");
    if (!(p.val_fraction > 0 && p.val_fraction < 1)) throw bad("val_fraction must be in (0, 1)");
}

// Held-out split, deterministic from the seed. Stratified by label when there are few distinct labels (the
// four difficulty classes), so that a small validation set still holds every class in proportion.
void split(const std::vector<float>& y, double frac, uint64_t seed, std::vector<int>& tr,
           std::vector<int>& va) {
    std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
    std::vector<int> perm(y.size());
    std::iota(perm.begin(), perm.end(), 0);
    shuffle(perm, rng);
    std::map<float, std::vector<int>> groups;
    for (int i : perm) groups[y[i]].push_back(i);
    auto take = [&](const std::vector<int>& g) {
        const size_t k = (size_t)std::lround(frac * g.size());
        va.insert(va.end(), g.begin(), g.begin() + k);
        tr.insert(tr.end(), g.begin() + k, g.end());
    };
    if (groups.size() <= 16) {
        for (const auto& kv : groups) take(kv.second);
    } else {
        take(perm);
    }
    if (va.empty()) va.push_back(tr.back()), tr.pop_back();
    if (tr.empty()) tr.push_back(va.back()), va.pop_back();
}

// MSE on the 0..100 scale of the classifier's predictions, from already standardised rows (what predict()
// computes, without standardising again).
double mse_of(const MlpWeights& w, float out_scale, const std::vector<float>& xs,
              const std::vector<float>& labels, int threads) {
    std::vector<float> out(labels.size());
    mlp_forward(w, xs.data(), (int)labels.size(), out.data(), threads);
    double s = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
        const double d = (double)(out[i] * out_scale) - labels[i];
        s += d * d;
    }
    return s / labels.size();
}

}  // namespace

KvClassifier train_kv_classifier(const std::vector<float>& x, int n_features, const std::vector<float>& y,
                                 const RouterTrainParams& p, TrainReport* report,
                                 const std::vector<int>* groups) {
    check_params(p);
    const int F = n_features;
    const int n = (int)y.size();
    if (F < 1) throw Error("router training: n_features must be >= 1");
    if (n < 2) throw Error("router training: need at least 2 examples, have " + std::to_string(n));
    if (x.size() != (size_t)n * F)
        throw Error("router training: " + std::to_string(x.size()) + " feature values for " +
                    std::to_string(n) + " examples of " + std::to_string(F));
    for (int i = 0; i < n; ++i)
        if (!(y[i] >= 0 && y[i] <= 100))
            throw Error("router training: label " + std::to_string(i) + " is not in [0, 100]");
    for (size_t i = 0; i < x.size(); ++i)
        if (!std::isfinite(x[i]))
            throw Error("router training: feature " + std::to_string(i % F) + " of example " +
                        std::to_string(i / F) + " is not finite");

    const int threads = resolve_threads(p.threads);
    std::vector<int> tr, va;
    if (!groups) {
        split(y, p.val_fraction, p.seed, tr, va);
    } else {
        // Whole groups go to one side, stratified by the label of each group's first row.
        if (groups->size() != (size_t)n)
            throw Error("router training: " + std::to_string(groups->size()) + " group ids for " +
                        std::to_string(n) + " examples");
        std::map<int, std::vector<int>> rows;
        std::vector<int> ids;
        for (int i = 0; i < n; ++i) {
            auto& g = rows[(*groups)[i]];
            if (g.empty()) ids.push_back((*groups)[i]);
            g.push_back(i);
        }
        if (ids.size() < 2)
            throw Error("router training: need at least 2 groups (questions), have " +
                        std::to_string(ids.size()));
        std::vector<float> yg;
        for (int id : ids) yg.push_back(y[rows[id][0]]);
        std::vector<int> trg, vag;
        split(yg, p.val_fraction, p.seed, trg, vag);
        for (int g : trg) tr.insert(tr.end(), rows[ids[g]].begin(), rows[ids[g]].end());
        for (int g : vag) va.insert(va.end(), rows[ids[g]].begin(), rows[ids[g]].end());
    }

    KvClassifier c;
    c.out_scale = (float)p.target_scale;
    if (p.standardize) {
        c.mean.resize(F);
        c.sd.resize(F);
        std::vector<double> s(F, 0.0), ss(F, 0.0);
        for (int i : tr) {
            const float* r = x.data() + (size_t)i * F;
            for (int k = 0; k < F; ++k) s[k] += r[k];
        }
        for (int k = 0; k < F; ++k) c.mean[k] = (float)(s[k] / tr.size());
        for (int i : tr) {
            const float* r = x.data() + (size_t)i * F;
            for (int k = 0; k < F; ++k) ss[k] += ((double)r[k] - c.mean[k]) * ((double)r[k] - c.mean[k]);
        }
        for (int k = 0; k < F; ++k) {
            const double sd = std::sqrt(ss[k] / tr.size());
            c.sd[k] = sd > 1e-6 ? (float)sd : 1.f;  // constant features: centred to 0, not amplified
        }
    }
    // Standardised copies of both splits, and the scaled training targets.
    c.net.n_in = F;  // standardise() reads n_features()
    std::vector<float> xtr(tr.size() * (size_t)F), xva(va.size() * (size_t)F);
    std::vector<float> ytr(tr.size()), lab_tr(tr.size()), lab_va(va.size());
    for (size_t i = 0; i < tr.size(); ++i) {
        standardise(c, x.data() + (size_t)tr[i] * F, &xtr[i * F]);
        lab_tr[i] = y[tr[i]];
        ytr[i] = (float)(y[tr[i]] / p.target_scale);
    }
    for (size_t i = 0; i < va.size(); ++i) {
        standardise(c, x.data() + (size_t)va[i] * F, &xva[i * F]);
        lab_va[i] = y[va[i]];
    }

    c.net = mlp_init(F, p.hidden, p.seed);
    MlpWeights best = c.net, grad;
    AdamState st;
    std::mt19937_64 rng(p.seed ^ 0xbf58476d1ce4e5b9ULL);
    std::vector<int> order(tr.size());
    std::iota(order.begin(), order.end(), 0);
    const int nb = std::min(p.batch, (int)tr.size());
    std::vector<float> xb((size_t)nb * F), yb(nb);
    TrainReport rep;
    rep.n_train = (int)tr.size();
    rep.n_val = (int)va.size();
    rep.val_rows = va;
    double best_val = INFINITY;
    int since_best = 0;
    for (int epoch = 1; epoch <= p.epochs; ++epoch) {
        shuffle(order, rng);
        for (size_t b0 = 0; b0 < order.size(); b0 += nb) {
            const int bn = (int)std::min<size_t>(nb, order.size() - b0);
            for (int r = 0; r < bn; ++r) {
                const int i = order[b0 + r];
                std::copy_n(xtr.data() + (size_t)i * F, F, xb.data() + (size_t)r * F);
                yb[r] = ytr[i];
            }
            mlp_loss_grad(c.net, xb.data(), yb.data(), bn, &grad, threads);
            adam_step(c.net, grad, st, p);
        }
        const double val = mse_of(c.net, c.out_scale, xva, lab_va, threads);
        if (!std::isfinite(val))
            throw Error("router training diverged: validation MSE is not finite after epoch " +
                        std::to_string(epoch) + " (lower lr)");
        rep.val_curve.push_back(val);
        rep.epochs_run = epoch;
        if (val < best_val) {
            best_val = val;
            rep.best_epoch = epoch;
            since_best = 0;
            if (p.restore_best) best = c.net;
        } else if (p.patience > 0 && ++since_best >= p.patience) {
            break;
        }
    }
    if (p.restore_best) c.net = std::move(best);
    if (report) {
        rep.train_mse = mse_of(c.net, c.out_scale, xtr, lab_tr, threads);
        rep.val_mse = mse_of(c.net, c.out_scale, xva, lab_va, threads);
        const double m = std::accumulate(lab_tr.begin(), lab_tr.end(), 0.0) / lab_tr.size();
        double s = 0;
        for (float l : lab_va) s += (l - m) * (l - m);
        rep.val_mse_baseline = s / lab_va.size();
        *report = std::move(rep);
    }
    return c;
}

// ---- router file ----------------------------------------------------------------------------------------

namespace {

// The double whose shortest decimal form is the float's shortest round-trip form: JSON stays short and
// reading it back as double, then float, gives the same float.
double exact(float f) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf - 1, f);
    *r.ptr = 0;
    return std::strtod(buf, nullptr);
}

json floats_json(const std::vector<float>& v) {
    json a = json::array();
    auto& arr = a.get_ref<json::array_t&>();
    arr.reserve(v.size());
    for (float f : v) arr.emplace_back(exact(f));
    return a;
}

std::string describe(const std::string& arch, int n_layer, int n_head_kv, int head_dim,
                     const std::string& tmpl) {
    return arch + " with " + std::to_string(n_layer) + " layers, KV width " +
           std::to_string(n_head_kv * head_dim) + " (" + std::to_string(n_head_kv) + " x " +
           std::to_string(head_dim) + "), template '" + tmpl + "'";
}

std::string router_name(const RouterFile& r) {
    return r.origin.empty() ? std::string("router") : "router '" + r.origin + "'";
}

bool same_pool(const PoolSpec& a, const PoolSpec& b) {
    return a.kv_part == b.kv_part && a.pos_agg == b.pos_agg && a.head_agg == b.head_agg &&
           a.layer_agg == b.layer_agg && a.normalize == b.normalize && a.layers == b.layers &&
           a.window == b.window;
}

// Consistency of a router with itself; `bad` makes the Error (naming the file).
template <typename Bad>
void validate(const RouterFile& r, Bad bad) {
    if (r.n_layer < 1 || r.n_head_kv < 1 || r.head_dim < 1) throw bad("model shape must be positive");
    if (!same_pool(r.pool, router_pool_spec(r.features, r.n_layer)))
        throw bad("pooling does not match the feature config " + to_string(r.features) + " for " +
                  std::to_string(r.n_layer) + " layers");
    const KvClassifier& c = r.classifier;
    const int want = router_feature_width(r.n_head_kv, r.head_dim);
    if (c.n_features() != want)
        throw bad("classifier reads " + std::to_string(c.n_features()) + " features, the model's KV gives " +
                  std::to_string(want) + " (2 x " + std::to_string(r.n_head_kv) + " x " +
                  std::to_string(r.head_dim) + ")");
    try {
        check_shape(c.net);
    } catch (const Error&) {
        throw bad("weight sizes do not fit n_features " + std::to_string(c.n_features()) + " and hidden " +
                  std::to_string(c.net.n_hidden));
    }
    if (c.mean.size() != c.sd.size() || (!c.mean.empty() && c.mean.size() != (size_t)want))
        throw bad("mean and sd must both be empty or hold n_features values");
    for (float s : c.sd)
        if (!(s > 0) || !std::isfinite(s)) throw bad("sd values must be finite and > 0");
    if (!(c.out_scale > 0) || !std::isfinite(c.out_scale)) throw bad("out_scale must be finite and > 0");
}

json pool_json(const PoolSpec& s, int n_layer) {
    std::vector<int> resolved;
    for (int l : s.layers) resolved.push_back(l < 0 ? n_layer + l : l);
    return {{"kv_part", to_string(s.kv_part)},   {"pos_agg", to_string(s.pos_agg)},
            {"head_agg", to_string(s.head_agg)}, {"layer_agg", to_string(s.layer_agg)},
            {"normalize", s.normalize},          {"layers", s.layers},
            {"resolved_layers", resolved},       {"window", s.window}};
}

}  // namespace

std::string router_to_json(const RouterFile& r) {
    validate(r, [&](const std::string& what) { return Error(router_name(r) + ": cannot save: " + what); });
    const KvClassifier& c = r.classifier;
    const RouterTrainParams& p = r.train;
    const TrainReport& t = r.report;
    // w1 in torch layout: one row of n_features weights per hidden unit.
    json w1 = json::array();
    std::vector<float> row(c.n_features());
    for (int j = 0; j < c.net.n_hidden; ++j) {
        for (int k = 0; k < c.n_features(); ++k) row[k] = c.net.w1[(size_t)k * c.net.n_hidden + j];
        w1.push_back(floats_json(row));
    }
    json j = {
        {"format", "kvlens-router"},
        {"version", RouterFile::kVersion},
        {"model",
         {{"arch", r.arch},
          {"n_layer", r.n_layer},
          {"n_head_kv", r.n_head_kv},
          {"head_dim", r.head_dim},
          {"kv_width", r.n_head_kv * r.head_dim},
          {"chat_template", r.chat_template}}},
        {"features",
         {{"preset", to_string(r.features)},
          {"seq_len", r.features.seq_len},
          {"n_layers", r.features.n_layers},
          {"n_features", c.n_features()},
          {"pooling", pool_json(r.pool, r.n_layer)}}},
        {"train",
         {{"preset", p.preset},
          {"hidden", p.hidden},
          {"lr", p.lr},
          {"batch", p.batch},
          {"epochs", p.epochs},
          {"patience", p.patience},
          {"restore_best", p.restore_best},
          {"weight_decay", p.weight_decay},
          {"beta1", p.beta1},
          {"beta2", p.beta2},
          {"eps", p.eps},
          {"standardize", p.standardize},
          {"target_scale", p.target_scale},
          {"val_fraction", p.val_fraction},
          {"seed", p.seed}}},
        {"report",
         {{"train_mse", t.train_mse},
          {"val_mse", t.val_mse},
          {"val_mse_baseline", t.val_mse_baseline},
          {"epochs_run", t.epochs_run},
          {"best_epoch", t.best_epoch},
          {"val_curve", t.val_curve},
          {"n_train", t.n_train},
          {"n_val", t.n_val}}},
        {"source", r.source},
        {"classifier",
         {{"n_features", c.n_features()},
          {"hidden", c.net.n_hidden},
          {"out_scale", exact(c.out_scale)},
          {"mean", floats_json(c.mean)},
          {"sd", floats_json(c.sd)},
          {"w1", std::move(w1)},
          {"b1", floats_json(c.net.b1)},
          {"w2", floats_json(c.net.w2)},
          {"b2", exact(c.net.b2)}}},
    };
    return j.dump(1) + "\n";
}

RouterFile router_from_json(const std::string& text, const std::string& origin) {
    auto bad = [&](const std::string& what) { return Error("router file '" + origin + "': " + what); };
    json j;
    try {
        j = json::parse(text);
    } catch (const std::exception&) {
        throw bad("not valid JSON");
    }
    if (!j.is_object() || !j.contains("format") || j["format"] != "kvlens-router")
        throw bad("not a kvlens router (\"format\" is not \"kvlens-router\")");
    RouterFile r;
    r.origin = origin;
    try {
        const int v = json_get<int>(j.at("version"));
        if (v != RouterFile::kVersion)
            throw bad("version " + std::to_string(v) + " is not supported (this kvlens reads version " +
                      std::to_string(RouterFile::kVersion) + ")");
        const json& m = j.at("model");
        r.arch = m.at("arch").get<std::string>();
        r.n_layer = json_get<int>(m.at("n_layer"));
        r.n_head_kv = json_get<int>(m.at("n_head_kv"));
        r.head_dim = json_get<int>(m.at("head_dim"));
        r.chat_template = m.at("chat_template").get<std::string>();

        const json& f = j.at("features");
        r.features.seq_len = json_get<int>(f.at("seq_len"));
        r.features.n_layers = json_get<int>(f.at("n_layers"));
        if (r.features.seq_len < 1 || r.features.n_layers < 1) throw bad("seq_len and n_layers must be >= 1");
        const json& pj = f.at("pooling");
        r.pool.kv_part = parse_kv_part(pj.at("kv_part").get<std::string>());
        r.pool.pos_agg = parse_pos_agg(pj.at("pos_agg").get<std::string>());
        r.pool.head_agg = parse_head_agg(pj.at("head_agg").get<std::string>());
        r.pool.layer_agg = parse_layer_agg(pj.at("layer_agg").get<std::string>());
        r.pool.normalize = pj.at("normalize").get<bool>();
        r.pool.layers.clear();
        for (const json& l : pj.at("layers")) r.pool.layers.push_back(json_get<int>(l));
        r.pool.window = json_get<int>(pj.at("window"));

        // Records, not needed to predict: defaults where absent.
        const json t = j.value("train", json::object());
        RouterTrainParams& p = r.train;
        p.preset = json_value(t, "preset", p.preset);
        p.hidden = json_value(t, "hidden", p.hidden);
        p.lr = json_value(t, "lr", p.lr);
        p.batch = json_value(t, "batch", p.batch);
        p.epochs = json_value(t, "epochs", p.epochs);
        p.patience = json_value(t, "patience", p.patience);
        p.restore_best = json_value(t, "restore_best", p.restore_best);
        p.weight_decay = json_value(t, "weight_decay", p.weight_decay);
        p.beta1 = json_value(t, "beta1", p.beta1);
        p.beta2 = json_value(t, "beta2", p.beta2);
        p.eps = json_value(t, "eps", p.eps);
        p.standardize = json_value(t, "standardize", p.standardize);
        p.target_scale = json_value(t, "target_scale", p.target_scale);
        p.val_fraction = json_value(t, "val_fraction", p.val_fraction);
        p.seed = json_value(t, "seed", p.seed);
        const json rep = j.value("report", json::object());
        TrainReport& tr = r.report;
        tr.train_mse = json_value(rep, "train_mse", 0.0);
        tr.val_mse = json_value(rep, "val_mse", 0.0);
        tr.val_mse_baseline = json_value(rep, "val_mse_baseline", 0.0);
        tr.epochs_run = json_value(rep, "epochs_run", 0);
        tr.best_epoch = json_value(rep, "best_epoch", 0);
        tr.val_curve = rep.value("val_curve", std::vector<double>());
        tr.n_train = json_value(rep, "n_train", 0);
        tr.n_val = json_value(rep, "n_val", 0);
        r.source = j.value("source", std::string());

        const json& cj = j.at("classifier");
        KvClassifier& c = r.classifier;
        const int F = json_get<int>(cj.at("n_features")), H = json_get<int>(cj.at("hidden"));
        if (F < 1 || H < 1) throw bad("n_features and hidden must be >= 1");
        auto floats = [&](const json& a, size_t n, const char* name) {
            if (!a.is_array() || a.size() != n)
                throw bad(std::string(name) + " must hold " + std::to_string(n) + " values");
            std::vector<float> out(n);
            for (size_t i = 0; i < n; ++i) {
                out[i] = json_get<float>(a[i]);
                if (!std::isfinite(out[i])) throw bad(std::string(name) + " holds a non-finite value");
            }
            return out;
        };
        c.out_scale = json_get<float>(cj.at("out_scale"));
        const size_t n_std = cj.at("mean").empty() ? 0 : (size_t)F;
        c.mean = floats(cj.at("mean"), n_std, "mean");
        c.sd = floats(cj.at("sd"), n_std, "sd");
        c.net.n_in = F;
        c.net.n_hidden = H;
        c.net.b1 = floats(cj.at("b1"), H, "b1");
        c.net.w2 = floats(cj.at("w2"), H, "w2");
        c.net.b2 = json_get<float>(cj.at("b2"));
        const json& w1 = cj.at("w1");
        if (!w1.is_array() || w1.size() != (size_t)H)
            throw bad("w1 must hold " + std::to_string(H) + " rows");
        c.net.w1.resize((size_t)F * H);
        for (int jj = 0; jj < H; ++jj) {
            const std::vector<float> row = floats(w1[jj], F, "a w1 row");
            for (int k = 0; k < F; ++k) c.net.w1[(size_t)k * H + jj] = row[k];
        }
        if (!std::isfinite(c.net.b2)) throw bad("b2 is not finite");
    } catch (const json::exception& e) {
        throw bad(std::string("missing or mistyped field (") + e.what() + ")");
    } catch (const Error& e) {
        const std::string msg = e.what();
        if (msg.rfind("router file '", 0) == 0) throw;
        throw bad(msg);
    }
    validate(r, bad);
    return r;
}

void save_router(const std::string& path, const RouterFile& r) {
    const std::string text = router_to_json(r);
    std::ofstream f(path, std::ios::binary);
    f << text;
    f.close();
    if (!f) throw Error("router file '" + path + "': cannot write");
}

RouterFile load_router(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error("router file '" + path + "': cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    return router_from_json(ss.str(), path);
}

void check_router_for_model(const RouterFile& r, const std::string& arch, int n_layer, int n_head_kv,
                            int head_dim, const std::string& template_name) {
    std::string diff;
    auto note = [&](bool differs, const char* what) {
        if (differs) diff += (diff.empty() ? "" : ", ") + std::string(what);
    };
    note(r.arch != arch, "arch");
    note(r.n_layer != n_layer, "layers");
    note(r.n_head_kv != n_head_kv || r.head_dim != head_dim, "KV shape");
    note(r.chat_template != template_name, "chat template");
    if (diff.empty()) return;
    throw Error(router_name(r) + " was trained for " +
                describe(r.arch, r.n_layer, r.n_head_kv, r.head_dim, r.chat_template) + "; this model is " +
                describe(arch, n_layer, n_head_kv, head_dim, template_name) + " (differs: " + diff +
                "); train a router for this model");
}

// ---- routing --------------------------------------------------------------------------------------------

const char* to_string(ThinkChoice c) {
    return c == ThinkChoice::Fast ? "fast" : "slow";
}

ThinkChoice route(float d, const RoutePolicy& p) {
    return d < p.route_threshold ? ThinkChoice::Fast : ThinkChoice::Slow;
}

bool should_switch(ThinkChoice current, float d, const RoutePolicy& p) {
    if (current == ThinkChoice::Slow) return d < p.route_threshold - p.delta;
    return d > p.route_threshold + p.delta;
}

}  // namespace kvlens
