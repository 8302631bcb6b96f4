// KVClassifier / router (method.md section 3): labels, feature config and its pooling, the MLP (gradient
// against finite differences, Adam), training on synthetic problems (both presets, early stopping,
// determinism), the router file (exact round trip, clear errors, refusing another model) and the switching
// policy. RouterRef.Dump writes the numbers tests/python/test_router_reference.py checks against numpy.
#include "methods/router.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "util/error.h"

using namespace kvlens;
using nlohmann::json;

namespace {

// Runs f, expects an Error whose message holds every one of `parts`.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
    try {
        f();
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        for (const std::string& p : parts)
            EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
                << "'" << p << "' not in: " << e.what();
    }
}

struct Data {
    int n = 0, F = 0;
    std::vector<float> x, y;
};

// n rows of F features (per-feature offsets and scales, so standardising matters); the label is
// 100 * sigmoid(gain * w.v / sqrt(F)) + noise, clamped to [0, 100], or with `classes` the difficulty class
// (0, 25, 75, 100) of that probability.
Data synthetic(int n, int F, uint32_t seed, double noise = 5, bool classes = false, double gain = 3) {
    Data d;
    d.n = n;
    d.F = F;
    std::mt19937 rng(seed), wr(1234);
    std::normal_distribution<double> g(0, 1);
    std::vector<double> w(F);
    for (double& v : w) v = g(wr);
    d.x.resize((size_t)n * F);
    d.y.resize(n);
    for (int i = 0; i < n; ++i) {
        double s = 0;
        for (int k = 0; k < F; ++k) {
            const double v = g(rng);
            d.x[(size_t)i * F + k] = (float)(v * (1 + k % 5) + (k % 7) - 3);
            s += w[k] * v;
        }
        const double p = 100 / (1 + std::exp(-gain * s / std::sqrt((double)F)));
        if (classes)
            d.y[i] = p < 25 ? 0.f : p < 50 ? 25.f : p < 75 ? 75.f : 100.f;
        else
            d.y[i] = (float)std::min(100.0, std::max(0.0, p + noise * g(rng)));
    }
    return d;
}

RouterTrainParams quick_params(int epochs = 60) {
    RouterTrainParams p;
    p.hidden = 64;
    p.epochs = epochs;
    p.patience = 10;
    p.seed = 7;
    return p;
}

std::string temp_path(const std::string& name) {
    return testing::TempDir() + "/router_test_" + name;
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

bool same_floats(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

bool same_weights(const MlpWeights& a, const MlpWeights& b) {
    return a.n_in == b.n_in && a.n_hidden == b.n_hidden && same_floats(a.w1, b.w1) &&
           same_floats(a.b1, b.b1) && same_floats(a.w2, b.w2) &&
           std::memcmp(&a.b2, &b.b2, sizeof(float)) == 0;
}

std::vector<float> predict_all(const KvClassifier& c, const Data& d) {
    std::vector<float> out(d.n);
    c.predict(d.x.data(), d.n, out.data());
    return out;
}

// A router for a model with 4 layers and 2 KV heads of dim 16 (64 features), trained on synthetic data.
RouterFile small_router(const RouterTrainParams& p, TrainReport* rep = nullptr) {
    RouterFile r;
    r.arch = "qwen3";
    r.n_layer = 4;
    r.n_head_kv = 2;
    r.head_dim = 16;
    r.chat_template = "chatml";
    r.features = parse_router_preset("32/8");
    r.pool = router_pool_spec(r.features, r.n_layer);
    r.train = p;
    r.source = "synthetic";
    const Data d = synthetic(300, router_feature_width(2, 16), 3);
    r.classifier = train_kv_classifier(d.x, d.F, d.y, p, &r.report);
    if (rep) *rep = r.report;
    return r;
}

}  // namespace

// ---- labels ---------------------------------------------------------------------------------------------

TEST(RouterLabel, Table) {
    struct Case {
        bool fast_correct;
        int fast_tokens;
        bool slow_correct;
        int label;
    };
    const Case cases[] = {
        {true, 0, false, 0},    {true, 1, true, 0},      {true, 127, false, 0},  {true, 128, false, 25},
        {true, 128, true, 25},  {true, 129, false, 25},  {true, 5000, true, 25}, {false, 10, true, 75},
        {false, 500, true, 75}, {false, 10, false, 100}, {false, 0, false, 100},
    };
    for (const Case& c : cases)
        EXPECT_EQ(difficulty_label(c.fast_correct, c.fast_tokens, c.slow_correct), c.label)
            << c.fast_correct << " " << c.fast_tokens << " " << c.slow_correct;
    // Another length threshold.
    EXPECT_EQ(difficulty_label(true, 63, false, 64), 0);
    EXPECT_EQ(difficulty_label(true, 64, false, 64), 25);
}

TEST(RouterLabel, Errors) {
    expect_error([] { difficulty_label(true, -1, true); }, {"fast_tokens -1"});
    expect_error([] { difficulty_label(true, 10, true, 0); }, {"long_tokens 0"});
}

// ---- features -------------------------------------------------------------------------------------------

TEST(RouterFeatures, Presets) {
    for (const char* s : {"32/8", "64/4", "128/2"}) EXPECT_EQ(to_string(parse_router_preset(s)), s);
    const RouterFeatures f = parse_router_preset("64/4");
    EXPECT_EQ(f.seq_len, 64);
    EXPECT_EQ(f.n_layers, 4);
    EXPECT_EQ(to_string(RouterFeatures{}), "32/8");  // the default is the paper's main setting
    for (const char* bad : {"", "32/4", "32-8", "32/8 ", "abc"})
        expect_error([&] { parse_router_preset(bad); },
                     {"'" + std::string(bad) + "'", "32/8, 64/4 or 128/2"});
}

TEST(RouterFeatures, PoolSpecForAFourLayerModel) {
    // Preset 32/8 on a model with only 4 layers: all of them.
    const PoolSpec s = router_pool_spec(parse_router_preset("32/8"), 4);
    EXPECT_EQ(s.kv_part, KvPart::KV);
    EXPECT_EQ(s.pos_agg, PosAgg::Sum);
    EXPECT_EQ(s.head_agg, HeadAgg::Flatten);
    EXPECT_EQ(s.layer_agg, LayerAgg::Mean);
    EXPECT_FALSE(s.normalize);
    EXPECT_EQ(s.layers, (std::vector<int>{-4, -3, -2, -1}));
    EXPECT_EQ(s.window, 32);

    // The pool gives 2 * n_head_kv * head_dim features: the layer mean of the sums over the last 32 positions
    // of [K | V].
    const int L = 4, H = 2, D = 3, W = H * D, n_pos = 40;
    KvPool pool(s, L, H, D);
    EXPECT_EQ(pool.result_rows(), 1);
    EXPECT_EQ(pool.result_width(), router_feature_width(H, D));
    std::vector<double> want(2 * W, 0.0);
    std::mt19937 rng(5);
    std::normal_distribution<float> g;
    for (int p = 0; p < n_pos; ++p)
        for (int l = 0; l < L; ++l) {
            std::vector<float> k(W), v(W);
            for (int i = 0; i < W; ++i) k[i] = g(rng), v[i] = g(rng);
            pool.add_k(l, k.data());
            pool.add_v(l, v.data());
            if (p >= n_pos - 32)
                for (int i = 0; i < W; ++i) want[i] += k[i] / L, want[W + i] += v[i] / L;
        }
    const Pooled got = pool.result();
    ASSERT_EQ(got.width, 2 * W);
    for (int i = 0; i < 2 * W; ++i) EXPECT_NEAR(got.data[i], want[i], 1e-4) << i;
}

TEST(RouterFeatures, PoolSpecForLargerModels) {
    EXPECT_EQ(router_pool_spec(parse_router_preset("32/8"), 28).layers,
              (std::vector<int>{-8, -7, -6, -5, -4, -3, -2, -1}));
    const PoolSpec s = router_pool_spec(parse_router_preset("128/2"), 28);
    EXPECT_EQ(s.layers, (std::vector<int>{-2, -1}));
    EXPECT_EQ(s.window, 128);
    EXPECT_EQ(router_pool_spec(parse_router_preset("64/4"), 4).layers, (std::vector<int>{-4, -3, -2, -1}));
    EXPECT_EQ(router_feature_width(8, 128), 2048);
    expect_error([] { router_pool_spec(RouterFeatures{}, 0); }, {"0 layers"});
    expect_error([] { router_pool_spec(RouterFeatures{0, 8}, 28); }, {"0/8"});
}

// ---- training parameters --------------------------------------------------------------------------------

TEST(RouterTrainParams, Presets) {
    const RouterTrainParams paper = router_train_preset("paper");
    EXPECT_EQ(paper.preset, "paper");
    EXPECT_DOUBLE_EQ(paper.lr, 1e-5);
    EXPECT_EQ(paper.batch, 1024);
    EXPECT_FALSE(paper.standardize);
    EXPECT_DOUBLE_EQ(paper.target_scale, 1);
    EXPECT_EQ(paper.patience, 0);
    EXPECT_FALSE(paper.restore_best);
    EXPECT_EQ(paper.hidden, 512);
    const RouterTrainParams tuned = router_train_preset("tuned"), def;
    EXPECT_EQ(tuned.preset, "tuned");
    EXPECT_EQ(tuned.lr, def.lr);
    EXPECT_EQ(tuned.batch, def.batch);
    EXPECT_TRUE(tuned.standardize);
    EXPECT_DOUBLE_EQ(tuned.target_scale, 100);
    EXPECT_GT(tuned.patience, 0);
    expect_error([] { router_train_preset("fast"); }, {"'fast'", "paper or tuned"});
}

// ---- the MLP --------------------------------------------------------------------------------------------

TEST(RouterMlp, InitLikeTorchLinear) {
    const MlpWeights a = mlp_init(100, 512, 1), b = mlp_init(100, 512, 1), c = mlp_init(100, 512, 2);
    EXPECT_TRUE(same_weights(a, b));
    EXPECT_FALSE(same_weights(a, c));
    float max1 = 0, max2 = 0;
    double mean1 = 0;
    for (float w : a.w1) max1 = std::max(max1, std::abs(w)), mean1 += w;
    for (float w : a.b1) EXPECT_LE(std::abs(w), 0.1f);
    for (float w : a.w2) max2 = std::max(max2, std::abs(w));
    EXPECT_LE(max1, 0.1f);  // 1 / sqrt(100)
    EXPECT_GT(max1, 0.099f);
    EXPECT_LE(max2, 1 / std::sqrt(512.f));
    EXPECT_GT(max2, 0.95f / std::sqrt(512.f));
    EXPECT_NEAR(mean1 / a.w1.size(), 0, 1e-3);
    expect_error([] { mlp_init(0, 4, 1); }, {"0 x 4"});
}

TEST(RouterMlp, GradientMatchesFiniteDifferences) {
    const int F = 6, H = 9, n = 5;
    std::mt19937 rng(3);
    std::normal_distribution<float> g;
    std::vector<float> x((size_t)n * F), y(n);
    for (float& v : x) v = g(rng);
    for (float& v : y) v = 0.5f + 0.3f * g(rng);

    // Smallest |pre-activation|: parameters are perturbed by h, which must not cross a ReLU kink.
    auto min_abs_pre = [&](const MlpWeights& m) {
        double lo = 1e9;
        for (int r = 0; r < n; ++r)
            for (int j = 0; j < H; ++j) {
                double z = m.b1[j];
                for (int k = 0; k < F; ++k) z += (double)x[r * F + k] * m.w1[k * H + j];
                lo = std::min(lo, std::abs(z));
            }
        return lo;
    };
    MlpWeights w;
    for (uint64_t seed = 1;; ++seed) {  // the first init whose pre-activations keep clear of the kink
        w = mlp_init(F, H, seed);
        if (min_abs_pre(w) > 0.05) break;
    }
    MlpWeights grad;
    mlp_loss_grad(w, x.data(), y.data(), n, &grad);

    const float h = 1e-3f;
    int checked = 0;
    auto check = [&](float& param, float analytic, const std::string& name) {
        const float saved = param;
        param = saved + h;
        const double up = mlp_loss_grad(w, x.data(), y.data(), n, nullptr);
        param = saved - h;
        const double down = mlp_loss_grad(w, x.data(), y.data(), n, nullptr);
        param = saved;
        const double fd = (up - down) / (2.0 * h);
        EXPECT_NEAR(analytic, fd, 2e-3 + 1e-2 * std::abs(fd)) << name;
        ++checked;
    };
    for (int k = 0; k < F; ++k)
        for (int j = 0; j < H; ++j)
            check(w.w1[k * H + j], grad.w1[k * H + j],
                  "w1[" + std::to_string(k) + "][" + std::to_string(j) + "]");
    for (int j = 0; j < H; ++j) check(w.b1[j], grad.b1[j], "b1[" + std::to_string(j) + "]");
    for (int j = 0; j < H; ++j) check(w.w2[j], grad.w2[j], "w2[" + std::to_string(j) + "]");
    check(w.b2, grad.b2, "b2");
    EXPECT_EQ(checked, F * H + 2 * H + 1);
    // The gradient is not trivially zero.
    double norm = 0;
    for (float v : grad.w1) norm += v * v;
    EXPECT_GT(norm, 1e-4);
}

TEST(RouterMlp, ThreadsDoNotChangeResults) {
    const int F = 256, H = 512, n = 64;  // large enough for two threads
    const MlpWeights w = mlp_init(F, H, 5);
    std::mt19937 rng(9);
    std::normal_distribution<float> g;
    std::vector<float> x((size_t)n * F), y(n);
    for (float& v : x) v = g(rng);
    for (float& v : y) v = g(rng);
    MlpWeights g1, g2;
    const double l1 = mlp_loss_grad(w, x.data(), y.data(), n, &g1, 1);
    const double l2 = mlp_loss_grad(w, x.data(), y.data(), n, &g2, 2);
    EXPECT_EQ(l1, l2);
    EXPECT_TRUE(same_weights(g1, g2));
    std::vector<float> o1(n), o2(n);
    mlp_forward(w, x.data(), n, o1.data(), 1);
    mlp_forward(w, x.data(), n, o2.data(), 3);
    EXPECT_TRUE(same_floats(o1, o2));
}

TEST(RouterMlp, AdamFirstStepAndWeightDecay) {
    const int F = 8, H = 16, n = 10;
    MlpWeights w = mlp_init(F, H, 2);
    const MlpWeights w0 = w;
    std::vector<float> x((size_t)n * F), y(n, 1.f);
    std::mt19937 rng(4);
    std::normal_distribution<float> g;
    for (float& v : x) v = g(rng);
    MlpWeights grad;
    mlp_loss_grad(w, x.data(), y.data(), n, &grad);
    RouterTrainParams p;
    p.lr = 1e-2;
    p.weight_decay = 0;
    AdamState st;
    adam_step(w, grad, st, p);
    EXPECT_EQ(st.t, 1);
    // First step: m / sqrt(v) = g / |g|, so every parameter with a clear gradient moves by lr against it.
    for (size_t i = 0; i < w.w1.size(); ++i) {
        const float gi = grad.w1[i];
        const float step = w.w1[i] - w0.w1[i];
        if (std::abs(gi) > 1e-5f)
            EXPECT_NEAR(step, -p.lr * (gi > 0 ? 1 : -1), 1e-5) << i;
        else
            EXPECT_NEAR(step, 0, p.lr) << i;
    }
    EXPECT_NEAR(w.b2 - w0.b2, -p.lr * (grad.b2 > 0 ? 1 : -1), 1e-5);

    // Decoupled weight decay with a zero gradient: weight matrices shrink by (1 - lr * wd), biases do not.
    MlpWeights v = w0;
    MlpWeights zero = w0;
    std::fill(zero.w1.begin(), zero.w1.end(), 0.f);
    std::fill(zero.b1.begin(), zero.b1.end(), 0.f);
    std::fill(zero.w2.begin(), zero.w2.end(), 0.f);
    zero.b2 = 0;
    p.weight_decay = 0.5;
    AdamState s2;
    adam_step(v, zero, s2, p);
    const float f = (float)(1 - p.lr * p.weight_decay);
    for (size_t i = 0; i < v.w1.size(); ++i) EXPECT_EQ(v.w1[i], w0.w1[i] * f);
    for (size_t i = 0; i < v.w2.size(); ++i) EXPECT_EQ(v.w2[i], w0.w2[i] * f);
    EXPECT_TRUE(same_floats(v.b1, w0.b1));
    EXPECT_EQ(v.b2, w0.b2);
}

// ---- classifier -----------------------------------------------------------------------------------------

TEST(RouterClassifier, BatchEqualsSingleAndStandardises) {
    const int F = 20, n = 150;  // more rows than one internal block
    KvClassifier c;
    c.net = mlp_init(F, 40, 8);
    c.out_scale = 100;
    std::mt19937 rng(6);
    std::normal_distribution<float> g;
    for (int k = 0; k < F; ++k) c.mean.push_back(g(rng)), c.sd.push_back(0.5f + std::abs(g(rng)));
    std::vector<float> x((size_t)n * F);
    for (float& v : x) v = 3 * g(rng);
    std::vector<float> batch(n), single(n), manual(n);
    c.predict(x.data(), n, batch.data());
    for (int i = 0; i < n; ++i) single[i] = c.predict(x.data() + (size_t)i * F);
    EXPECT_TRUE(same_floats(batch, single));
    std::vector<float> xs(x.size());
    for (size_t i = 0; i < x.size(); ++i) xs[i] = (x[i] - c.mean[i % F]) / c.sd[i % F];
    mlp_forward(c.net, xs.data(), n, manual.data());
    for (float& m : manual) m *= 100;
    EXPECT_TRUE(same_floats(batch, manual));
    EXPECT_EQ(c.n_features(), F);
}

// ---- training -------------------------------------------------------------------------------------------

TEST(RouterTrain, TunedLearnsASyntheticRegression) {
    const Data d = synthetic(800, 32, 1);
    TrainReport rep;
    const KvClassifier c = train_kv_classifier(d.x, d.F, d.y, quick_params(), &rep);
    EXPECT_EQ(rep.n_train + rep.n_val, d.n);
    EXPECT_EQ(rep.n_val, 160);
    EXPECT_GT(rep.val_mse_baseline, 500);
    EXPECT_LT(rep.val_mse, 0.25 * rep.val_mse_baseline) << rep.val_mse << " vs " << rep.val_mse_baseline;
    EXPECT_LT(rep.train_mse, rep.val_mse_baseline);
    EXPECT_GE(rep.best_epoch, 1);
    EXPECT_LE(rep.best_epoch, rep.epochs_run);
    ASSERT_EQ((int)rep.val_curve.size(), rep.epochs_run);
    EXPECT_EQ(rep.val_mse, rep.val_curve[rep.best_epoch - 1]);  // the best epoch's weights came back
    EXPECT_EQ(c.mean.size(), (size_t)d.F);
    EXPECT_FLOAT_EQ(c.out_scale, 100);
    // Predictions on the 0..100 scale.
    const std::vector<float> p = predict_all(c, d);
    double mean = 0;
    for (float v : p) mean += v / p.size();
    EXPECT_GT(mean, 20);
    EXPECT_LT(mean, 80);
}

TEST(RouterTrain, TunedLearnsDifficultyClasses) {
    const Data d = synthetic(800, 32, 2, 0, true);
    TrainReport rep;
    train_kv_classifier(d.x, d.F, d.y, quick_params(), &rep);
    EXPECT_LT(rep.val_mse, 0.4 * rep.val_mse_baseline) << rep.val_mse << " vs " << rep.val_mse_baseline;
    // Stratified split: 20% of each class (rounded) is held out.
    int count[4] = {0, 0, 0, 0};
    for (float y : d.y) ++count[y == 0 ? 0 : y == 25 ? 1 : y == 75 ? 2 : 3];
    int want_val = 0;
    for (int c : count) want_val += (int)std::lround(0.2 * c);
    EXPECT_EQ(rep.n_val, want_val);
}

TEST(RouterTrain, PaperPresetLearnsSlowly) {
    // lr 1e-5 on raw features with targets 0..100: the fit starts near 0 (the init's output) and creeps
    // upwards; on a few hundred examples (one minibatch per epoch) it stays far from useful. The same
    // objective with a larger lr learns, so the slowness is the preset's, not a bug.
    const Data d = synthetic(600, 32, 4);
    RouterTrainParams p = router_train_preset("paper");
    p.epochs = 40;
    p.hidden = 64;
    TrainReport rep;
    const KvClassifier c = train_kv_classifier(d.x, d.F, d.y, p, &rep);
    EXPECT_TRUE(c.mean.empty());
    EXPECT_FLOAT_EQ(c.out_scale, 1);
    EXPECT_EQ(rep.epochs_run, 40);                 // no early stopping
    EXPECT_EQ(rep.val_mse, rep.val_curve.back());  // the last epoch's weights
    EXPECT_LT(rep.val_curve.back(), rep.val_curve.front());
    EXPECT_GT(rep.val_mse, rep.val_mse_baseline);

    p.lr = 1e-3;
    p.batch = 32;
    p.epochs = 60;
    p.hidden = 512;
    TrainReport fast;
    train_kv_classifier(d.x, d.F, d.y, p, &fast);
    EXPECT_LT(fast.val_mse, 0.5 * fast.val_mse_baseline) << fast.val_mse << " vs " << fast.val_mse_baseline;
}

TEST(RouterTrain, EarlyStoppingReturnsTheBestEpoch) {
    // Few noisy examples, many features: validation MSE bottoms out early, then rises (overfitting).
    const Data d = synthetic(160, 64, 5, 15, false, 1);
    RouterTrainParams p = quick_params(300);
    p.patience = 5;
    TrainReport rep;
    const KvClassifier c = train_kv_classifier(d.x, d.F, d.y, p, &rep);
    ASSERT_LT(rep.epochs_run, 300) << "no early stop";
    EXPECT_EQ(rep.epochs_run, rep.best_epoch + p.patience);
    EXPECT_EQ(rep.val_mse, rep.val_curve[rep.best_epoch - 1]);
    for (int e = rep.best_epoch; e < rep.epochs_run; ++e) EXPECT_GE(rep.val_curve[e], rep.val_mse);

    // The same run stopped at the best epoch by hand gives bit-identical weights.
    RouterTrainParams q = p;
    q.epochs = rep.best_epoch;
    q.patience = 0;
    q.restore_best = false;
    TrainReport rq;
    const KvClassifier cq = train_kv_classifier(d.x, d.F, d.y, q, &rq);
    EXPECT_TRUE(same_weights(c.net, cq.net));
    EXPECT_TRUE(same_floats(predict_all(c, d), predict_all(cq, d)));

    // Without restore_best the last epoch's weights come back.
    q = p;
    q.restore_best = false;
    TrainReport rl;
    train_kv_classifier(d.x, d.F, d.y, q, &rl);
    EXPECT_EQ(rl.epochs_run, rep.epochs_run);
    EXPECT_EQ(rl.val_mse, rl.val_curve.back());
    EXPECT_GT(rl.val_mse, rep.val_mse);
}

TEST(RouterTrain, DeterministicForASeed) {
    const Data d = synthetic(200, 256, 6);
    RouterTrainParams p = quick_params(8);
    p.hidden = 512;  // wide enough for the kernels to use two threads
    p.threads = 1;
    TrainReport r1, r2, r3, r4;
    const KvClassifier a = train_kv_classifier(d.x, d.F, d.y, p, &r1);
    const KvClassifier b = train_kv_classifier(d.x, d.F, d.y, p, &r2);
    EXPECT_TRUE(same_weights(a.net, b.net));
    EXPECT_EQ(r1.val_curve, r2.val_curve);
    p.threads = 2;
    const KvClassifier t = train_kv_classifier(d.x, d.F, d.y, p, &r3);
    EXPECT_TRUE(same_weights(a.net, t.net));
    EXPECT_TRUE(same_floats(a.mean, t.mean));
    p.seed = 8;
    const KvClassifier s = train_kv_classifier(d.x, d.F, d.y, p, &r4);
    EXPECT_FALSE(same_weights(a.net, s.net));
    EXPECT_NE(r1.val_curve, r4.val_curve);
}

TEST(RouterTrain, GroupsStayOnOneSideOfTheSplit) {
    // 60 questions with 1 + (q % 5) rows each (a prompt and windows along its answers).
    const Data d0 = synthetic(60 * 5, 16, 11);
    Data d;
    d.F = d0.F;
    std::vector<int> groups;
    for (int q = 0, row = 0; q < 60; ++q)
        for (int k = 0; k <= q % 5; ++k, ++row) {
            d.x.insert(d.x.end(), d0.x.begin() + (size_t)row * d.F, d0.x.begin() + (size_t)(row + 1) * d.F);
            d.y.push_back(d0.y[row]);
            groups.push_back(1000 + 7 * q);  // ids need not be dense
        }
    d.n = (int)d.y.size();
    TrainReport r;
    train_kv_classifier(d.x, d.F, d.y, quick_params(2), &r, &groups);
    EXPECT_EQ(r.n_train + r.n_val, d.n);
    EXPECT_EQ((int)r.val_rows.size(), r.n_val);
    std::set<int> val_groups, val_rows(r.val_rows.begin(), r.val_rows.end());
    for (int i : r.val_rows) val_groups.insert(groups[i]);
    EXPECT_EQ(val_groups.size(), 12u);  // 20% of the 60 questions
    for (int i = 0; i < d.n; ++i) EXPECT_EQ(val_rows.count(i) == 1, val_groups.count(groups[i]) == 1) << i;
    // Without groups, the split is by row.
    TrainReport r2;
    train_kv_classifier(d.x, d.F, d.y, quick_params(2), &r2);
    EXPECT_NEAR(r2.n_val, 0.2 * d.n, 4);

    std::vector<int> short_groups(groups.begin(), groups.end() - 1);
    expect_error([&] { train_kv_classifier(d.x, d.F, d.y, quick_params(2), nullptr, &short_groups); },
                 {"group ids for"});
    std::vector<int> one_group(groups.size(), 3);
    expect_error([&] { train_kv_classifier(d.x, d.F, d.y, quick_params(2), nullptr, &one_group); },
                 {"at least 2 groups"});
}

TEST(RouterTrain, Errors) {
    const Data d = synthetic(20, 4, 1);
    const RouterTrainParams p = quick_params(2);
    expect_error([&] { train_kv_classifier(d.x, 5, d.y, p); }, {"80 feature values for 20 examples of 5"});
    expect_error([&] { train_kv_classifier({1, 2, 3, 4}, 4, {50}, p); }, {"at least 2 examples"});
    expect_error(
        [&] {
            std::vector<float> x = d.x;
            x[4 * 3 + 2] = NAN;
            train_kv_classifier(x, 4, d.y, p);
        },
        {"feature 2 of example 3 is not finite"});
    expect_error(
        [&] {
            std::vector<float> y = d.y;
            y[7] = 101;
            train_kv_classifier(d.x, 4, y, p);
        },
        {"label 7 is not in [0, 100]"});
    auto bad_param = [&](const std::function<void(RouterTrainParams&)>& set, const std::string& what) {
        RouterTrainParams q = p;
        set(q);
        expect_error([&] { train_kv_classifier(d.x, 4, d.y, q); }, {what});
    };
    bad_param([](RouterTrainParams& q) { q.lr = 0; }, "lr");
    bad_param([](RouterTrainParams& q) { q.batch = 0; }, "batch");
    bad_param([](RouterTrainParams& q) { q.val_fraction = 1; }, "val_fraction");
    bad_param([](RouterTrainParams& q) { q.hidden = 0; }, "hidden");
    bad_param([](RouterTrainParams& q) { q.epochs = 0; }, "epochs");
}

// ---- router file ----------------------------------------------------------------------------------------

TEST(RouterFile, RoundTripPredictsIdentically) {
    for (const char* preset : {"tuned", "paper"}) {
        SCOPED_TRACE(preset);
        RouterTrainParams p = router_train_preset(preset);
        p.hidden = 48;
        p.epochs = std::string(preset) == "paper" ? 3 : 20;
        const RouterFile r = small_router(p);
        const std::string path = temp_path(std::string(preset) + ".json");
        save_router(path, r);
        const RouterFile l = load_router(path);
        EXPECT_EQ(l.origin, path);
        EXPECT_EQ(l.arch, "qwen3");
        EXPECT_EQ(l.n_layer, 4);
        EXPECT_EQ(l.n_head_kv, 2);
        EXPECT_EQ(l.head_dim, 16);
        EXPECT_EQ(l.chat_template, "chatml");
        EXPECT_EQ(to_string(l.features), "32/8");
        EXPECT_EQ(l.pool.layers, (std::vector<int>{-4, -3, -2, -1}));
        EXPECT_EQ(l.pool.window, 32);
        EXPECT_EQ(l.train.preset, preset);
        EXPECT_EQ(l.train.lr, p.lr);
        EXPECT_EQ(l.train.seed, p.seed);
        EXPECT_EQ(l.report.val_curve, r.report.val_curve);
        EXPECT_EQ(l.report.best_epoch, r.report.best_epoch);
        EXPECT_EQ(l.report.val_mse, r.report.val_mse);
        EXPECT_EQ(l.source, "synthetic");
        EXPECT_TRUE(same_weights(l.classifier.net, r.classifier.net));
        EXPECT_TRUE(same_floats(l.classifier.mean, r.classifier.mean));
        EXPECT_TRUE(same_floats(l.classifier.sd, r.classifier.sd));
        EXPECT_EQ(l.classifier.out_scale, r.classifier.out_scale);
        const Data d = synthetic(100, 64, 99);
        EXPECT_TRUE(same_floats(predict_all(l.classifier, d), predict_all(r.classifier, d)));
        // Saving the loaded router writes the same file.
        const std::string again = temp_path(std::string(preset) + "_again.json");
        save_router(again, l);
        EXPECT_EQ(read_text(again), read_text(path));

        // Layout: w1 as torch's Linear.weight (hidden x n_features).
        const json j = json::parse(read_text(path));
        EXPECT_EQ(j["format"], "kvlens-router");
        EXPECT_EQ(j["version"], 1);
        EXPECT_EQ(j["model"]["kv_width"], 32);
        EXPECT_EQ(j["features"]["pooling"]["resolved_layers"], json({0, 1, 2, 3}));
        EXPECT_EQ(j["features"]["pooling"]["kv_part"], "kv_cat");
        ASSERT_EQ(j["classifier"]["w1"].size(), 48u);
        ASSERT_EQ(j["classifier"]["w1"][0].size(), 64u);
        EXPECT_EQ((float)j["classifier"]["w1"][5][7].get<double>(), r.classifier.net.w1[7 * 48 + 5]);
        std::remove(path.c_str());
        std::remove(again.c_str());
    }
}

TEST(RouterFile, LoadErrors) {
    RouterTrainParams p = quick_params(3);
    p.hidden = 8;
    const RouterFile r = small_router(p);
    const std::string good = router_to_json(r);
    const std::string path = temp_path("bad.json");
    expect_error([] { load_router("/nonexistent/router.json"); },
                 {"'/nonexistent/router.json'", "cannot open"});

    auto bad_file = [&](const std::string& text, const std::string& what) {
        write_text(path, text);
        expect_error([&] { load_router(path); }, {"router file '" + path + "'", what});
    };
    auto edited = [&](const std::function<void(json&)>& edit) {
        json j = json::parse(good);
        edit(j);
        return j.dump();
    };
    bad_file("{ not json", "not valid JSON");
    bad_file("[1, 2]", "not a kvlens router");
    bad_file(edited([](json& j) { j["format"] = "kvlens-calibration"; }), "not a kvlens router");
    bad_file(edited([](json& j) { j["version"] = 2; }), "version 2 is not supported");
    bad_file(edited([](json& j) { j["model"].erase("arch"); }), "missing or mistyped field");
    bad_file(edited([](json& j) { j["classifier"]["b1"].erase(0); }), "b1 must hold 8 values");
    bad_file(edited([](json& j) { j["classifier"]["w1"][3].erase(0); }), "w1 row must hold 64 values");
    bad_file(edited([](json& j) { j["classifier"]["w1"].erase(0); }), "w1 must hold 8 rows");
    bad_file(edited([](json& j) { j["classifier"]["mean"].erase(0); }), "mean must hold 64 values");
    bad_file(edited([](json& j) { j["classifier"]["w2"][0] = nullptr; }), "missing or mistyped field");
    bad_file(edited([](json& j) { j["classifier"]["sd"][0] = 0; }), "sd values must be finite and > 0");
    bad_file(edited([](json& j) { j["model"]["head_dim"] = 8; }), "classifier reads 64 features");
    bad_file(edited([](json& j) { j["features"]["pooling"]["window"] = 64; }),
             "pooling does not match the feature config 32/8");
    bad_file(edited([](json& j) { j["features"]["pooling"]["pos_agg"] = "mean"; }), "pooling does not match");
    bad_file(edited([](json& j) { j["features"]["pooling"]["pos_agg"] = "median"; }), "median");
    std::remove(path.c_str());
}

TEST(RouterFile, SaveRefusesAnInconsistentRouter) {
    RouterTrainParams p = quick_params(2);
    p.hidden = 8;
    RouterFile r = small_router(p);
    r.head_dim = 32;
    expect_error([&] { save_router(temp_path("never.json"), r); },
                 {"cannot save", "classifier reads 64 features"});
    r.head_dim = 16;
    r.pool.window = 7;
    expect_error([&] { router_to_json(r); }, {"pooling does not match"});
    r.pool.window = 32;
    expect_error([&] { save_router("/nonexistent/dir/r.json", r); },
                 {"'/nonexistent/dir/r.json'", "cannot write"});
}

TEST(RouterFile, RefusesAnotherModel) {
    RouterFile r;
    r.arch = "qwen3";
    r.n_layer = 28;
    r.n_head_kv = 8;
    r.head_dim = 128;
    r.chat_template = "qwen3";
    r.origin = "models/qwen3.router.json";
    check_router_for_model(r, "qwen3", 28, 8, 128, "qwen3");  // no throw
    expect_error([&] { check_router_for_model(r, "llama", 30, 3, 64, "llama3"); },
                 {"router 'models/qwen3.router.json' was trained for qwen3 with 28 layers, KV width 1024",
                  "this model is llama with 30 layers, KV width 192",
                  "differs: arch, layers, KV shape, chat template"});
    expect_error([&] { check_router_for_model(r, "qwen3", 28, 8, 128, "chatml"); },
                 {"template 'qwen3'", "template 'chatml'", "differs: chat template"});
    // Same KV width, other shape: the flattened heads mean something else.
    expect_error([&] { check_router_for_model(r, "qwen3", 28, 16, 64, "qwen3"); }, {"differs: KV shape"});
    expect_error([&] { check_router_for_model(r, "qwen3", 36, 8, 128, "qwen3"); }, {"differs: layers"});
}

// ---- routing policy -------------------------------------------------------------------------------------

TEST(RoutePolicy, Route) {
    const RoutePolicy p;
    EXPECT_EQ(route(0, p), ThinkChoice::Fast);
    EXPECT_EQ(route(49.99f, p), ThinkChoice::Fast);
    EXPECT_EQ(route(50, p), ThinkChoice::Slow);
    EXPECT_EQ(route(100, p), ThinkChoice::Slow);
    EXPECT_EQ(route(-3, p), ThinkChoice::Fast);  // predictions are not clamped
    EXPECT_EQ(route(NAN, p), ThinkChoice::Slow);
    EXPECT_STREQ(to_string(ThinkChoice::Fast), "fast");
    EXPECT_STREQ(to_string(ThinkChoice::Slow), "slow");
    RoutePolicy q;
    q.route_threshold = 30;
    EXPECT_EQ(route(40, q), ThinkChoice::Slow);
    EXPECT_EQ(p.check_every, 16);
}

TEST(RoutePolicy, SwitchWithHysteresis) {
    const RoutePolicy p;  // 50 +- 20
    EXPECT_TRUE(should_switch(ThinkChoice::Slow, 29.9f, p));
    EXPECT_FALSE(should_switch(ThinkChoice::Slow, 30, p));
    EXPECT_FALSE(should_switch(ThinkChoice::Slow, 45, p));  // below 50 but within the band: keep thinking
    EXPECT_FALSE(should_switch(ThinkChoice::Slow, 90, p));
    EXPECT_TRUE(should_switch(ThinkChoice::Fast, 70.1f, p));
    EXPECT_FALSE(should_switch(ThinkChoice::Fast, 70, p));
    EXPECT_FALSE(should_switch(ThinkChoice::Fast, 55, p));
    EXPECT_FALSE(should_switch(ThinkChoice::Fast, 5, p));
    EXPECT_FALSE(should_switch(ThinkChoice::Fast, NAN, p));
    EXPECT_FALSE(should_switch(ThinkChoice::Slow, NAN, p));
    RoutePolicy q;
    q.delta = 0;
    EXPECT_TRUE(should_switch(ThinkChoice::Slow, 49, q));
    EXPECT_TRUE(should_switch(ThinkChoice::Fast, 51, q));
}

// ---- numpy reference dump -------------------------------------------------------------------------------

namespace {

json floats(const std::vector<float>& v) {
    json a = json::array();
    for (float f : v) a.push_back((double)f);
    return a;
}

// Torch layout: w1 as hidden x n_in.
json weights_json(const MlpWeights& w) {
    json w1 = json::array();
    for (int j = 0; j < w.n_hidden; ++j) {
        json row = json::array();
        for (int k = 0; k < w.n_in; ++k) row.push_back((double)w.w1[(size_t)k * w.n_hidden + j]);
        w1.push_back(row);
    }
    return {{"w1", w1}, {"b1", floats(w.b1)}, {"w2", floats(w.w2)}, {"b2", (double)w.b2}};
}

}  // namespace

// Init weights, three minibatches, the first minibatch's loss and gradient, the weights after each AdamW
// step, and a small trained router with rows and its predictions: router_ref.json (and
// router_ref.router.json) in $KVLENS_ROUTER_REF_OUT (else the test temp dir), for
// tests/python/test_router_reference.py.
TEST(RouterRef, Dump) {
    const char* env = std::getenv("KVLENS_ROUTER_REF_OUT");
    const std::string dir = env && *env ? std::string(env) + "/" : testing::TempDir();
    const int F = 40, H = 32, B = 16, steps = 3;
    RouterTrainParams p;
    p.lr = 1e-2;
    p.weight_decay = 0.1;
    MlpWeights w = mlp_init(F, H, 21);
    json out = {{"n_in", F},
                {"n_hidden", H},
                {"lr", p.lr},
                {"beta1", p.beta1},
                {"beta2", p.beta2},
                {"eps", p.eps},
                {"weight_decay", p.weight_decay},
                {"init", weights_json(w)}};
    std::mt19937 rng(17);
    std::normal_distribution<float> g;
    AdamState st;
    json batches = json::array(), after = json::array();
    for (int s = 0; s < steps; ++s) {
        std::vector<float> x((size_t)B * F), y(B);
        for (float& v : x) v = g(rng);
        for (float& v : y) v = 0.5f + 0.25f * g(rng);
        batches.push_back({{"x", floats(x)}, {"y", floats(y)}});
        MlpWeights grad;
        const double loss = mlp_loss_grad(w, x.data(), y.data(), B, &grad);
        if (s == 0) {
            out["loss0"] = loss;
            out["grad0"] = weights_json(grad);
        }
        adam_step(w, grad, st, p);
        after.push_back(weights_json(w));
    }
    out["batches"] = batches;
    out["after"] = after;

    // A trained router, its file and predictions on fresh rows (the numpy side reads the file).
    RouterTrainParams rp = quick_params(15);
    rp.hidden = 24;
    const RouterFile r = small_router(rp);
    const std::string router_path = dir + "router_ref.router.json";
    save_router(router_path, r);
    const Data d = synthetic(30, 64, 77);
    out["router_file"] = "router_ref.router.json";
    out["rows"] = floats(d.x);
    out["predictions"] = floats(predict_all(r.classifier, d));

    std::ofstream f(dir + "router_ref.json");
    f << out.dump() << "\n";
    ASSERT_TRUE(f.good());
}

// Timing on the size of a real training set (2048 features: 8 KV heads of dim 128): run by hand with
// --gtest_also_run_disabled_tests --gtest_filter=RouterTiming.*
TEST(RouterTiming, DISABLED_Tuned3000x2048) {
    const Data d = synthetic(3000, 2048, 1, 5, true);
    RouterTrainParams p;
    const auto t0 = std::chrono::steady_clock::now();
    TrainReport rep;
    train_kv_classifier(d.x, d.F, d.y, p, &rep);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("tuned, 3000 x 2048: %.1f s, %d epochs (%.2f s/epoch), best %d, val MSE %.1f (constant %.1f)\n", s,
           rep.epochs_run, s / rep.epochs_run, rep.best_epoch, rep.val_mse, rep.val_mse_baseline);
}

// The fuzzer's regression inputs (fuzz/regressions/router_file: 1e300 or 3e10 where an int or a float is
// read) are refused with a clear error instead of an undefined conversion.
TEST(RouterFile, OutOfRangeNumbersAreRefused) {
    const std::filesystem::path dir =
        std::filesystem::path(KVLENS_SOURCE_DIR) / "fuzz/regressions/router_file";
    int n = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        std::ifstream f(entry.path());
        const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        try {
            router_from_json(text, "r.json");
            ADD_FAILURE() << entry.path() << " was accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("mistyped"), std::string::npos)
                << entry.path() << ": " << e.what();
        }
        ++n;
    }
    EXPECT_GE(n, 5);
}
