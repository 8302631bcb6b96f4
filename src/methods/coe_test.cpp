// KV-CoE: scores on hand-made and random chains (degenerate cases, invariances), the probability baselines,
// constant streaming state, and on tiny-qwen3 the streamed chains against a recomputation from recorded rows,
// mid-generation readings, and batched sequences each with their own scorer.
// (tests/python/test_coe_reference.py checks the scores against an independent numpy implementation.)
#include "methods/coe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>

#include "util/error.h"

using namespace kvlens;

namespace {

const double kPi = std::acos(-1.0);

Chain make_chain(const std::vector<std::vector<double>>& rows) {
    Chain ch;
    ch.n_states = (int)rows.size();
    ch.width = (int)rows.at(0).size();
    for (const auto& r : rows) ch.data.insert(ch.data.end(), r.begin(), r.end());
    return ch;
}

Chain random_chain(std::mt19937& rng, int n_states, int width) {
    std::normal_distribution<double> g;
    Chain ch;
    ch.n_states = n_states;
    ch.width = width;
    for (int i = 0; i < n_states * width; ++i) ch.data.push_back(g(rng));
    return ch;
}

void expect_finite(const CoeScores& s) {
    for (double x : {s.mag, s.ang, s.r, s.c, s.endpoint_dist, s.endpoint_angle})
        EXPECT_TRUE(std::isfinite(x));
    for (double x : s.m) EXPECT_TRUE(std::isfinite(x));
    for (double x : s.a) EXPECT_TRUE(std::isfinite(x));
}

// ---- scores on chains -------------------------------------------------------------------------------------

TEST(CoeScores, QuarterTurnsByHand) {
    // Two steps of length sqrt(2) turning by pi/2 each; the endpoints are 2 apart and opposite (angle pi).
    const CoeScores s = coe_scores(make_chain({{1, 0}, {0, 1}, {-1, 0}}));
    EXPECT_EQ(s.status, kCoeOk);
    ASSERT_EQ(s.m.size(), 2u);
    for (int i = 0; i < 2; ++i) {
        EXPECT_NEAR(s.m[i], std::sqrt(2.0) / 2, 1e-15);
        EXPECT_NEAR(s.a[i], 0.5, 1e-15);
    }
    EXPECT_NEAR(s.endpoint_dist, 2, 1e-15);
    EXPECT_EQ(s.endpoint_angle, kPi);
    EXPECT_NEAR(s.r, std::sqrt(0.5) - 0.5, 1e-15);
    // All steps alike: the mean of M (cos A, sin A) has length M.
    EXPECT_NEAR(s.c, std::sqrt(0.5), 1e-15);
}

TEST(CoeScores, StraightLineHasEqualStepsSummingToOne) {
    // h_i = p + i d: collinear, equal steps, so M_i = 1/N; the steps' angles shrink as the norm grows.
    const int N = 6;
    std::vector<std::vector<double>> rows;
    for (int i = 0; i <= N; ++i) rows.push_back({1.0 + i, 2.0 - 0.5 * i, 0.25 * i});
    const CoeScores s = coe_scores(make_chain(rows));
    for (double m : s.m) EXPECT_NEAR(m, 1.0 / N, 1e-14);
    EXPECT_NEAR(s.mag, 1.0 / N, 1e-14);
    // The angle subtended by the whole segment is the sum of the angles of its pieces (they lie in a plane,
    // turning one way): sum A_i = 1.
    double sum_a = 0;
    for (double a : s.a) sum_a += a;
    EXPECT_NEAR(sum_a, 1.0, 1e-12);
}

TEST(CoeScores, RandomChainsInvariancesAndBounds) {
    std::mt19937 rng(42);
    for (int n_states : {2, 3, 8, 25}) {
        for (int width : {1, 5, 96}) {
            const Chain ch = random_chain(rng, n_states, width);
            const CoeScores s = coe_scores(ch);
            SCOPED_TRACE("chain " + std::to_string(n_states) + "x" + std::to_string(width));
            expect_finite(s);
            ASSERT_EQ((int)s.m.size(), n_states - 1);
            EXPECT_DOUBLE_EQ(s.r, s.mag - s.ang);
            // |mean of M_i (cos A_i, sin A_i)| <= mean of M_i.
            EXPECT_LE(s.c, s.mag * (1 + 1e-12));
            // Triangle inequality: the steps are at least as long as the endpoint gap.
            EXPECT_GE(s.mag * (n_states - 1), 1 - 1e-12);

            // Every score is a ratio: scaling the chain, or permuting coordinates, changes nothing.
            Chain scaled = ch, permuted = ch;
            for (double& x : scaled.data) x *= 37.5;
            for (int i = 0; i < n_states; ++i) {
                std::reverse(permuted.data.begin() + (size_t)i * width,
                             permuted.data.begin() + (size_t)(i + 1) * width);
            }
            for (const Chain* other : {&scaled, &permuted}) {
                const CoeScores t = coe_scores(*other);
                EXPECT_NEAR(t.mag, s.mag, 1e-12 * s.mag);
                EXPECT_NEAR(t.ang, s.ang, 1e-12 * s.ang);
                EXPECT_NEAR(t.c, s.c, 1e-12 * s.c);
                EXPECT_EQ(t.status, s.status);
            }
        }
    }
}

TEST(CoeScores, FloatInputEqualsDoubleInput) {
    std::mt19937 rng(7);
    const Chain ch = random_chain(rng, 5, 33);
    std::vector<float> f(ch.data.begin(), ch.data.end());
    std::vector<double> back(f.begin(), f.end());
    const CoeScores a = coe_scores(f.data(), 5, 33), b = coe_scores(back.data(), 5, 33);
    EXPECT_EQ(a.mag, b.mag);
    EXPECT_EQ(a.ang, b.ang);
    EXPECT_EQ(a.c, b.c);
    EXPECT_EQ(a.m, b.m);
    EXPECT_EQ(a.a, b.a);
}

TEST(CoeDegenerate, SingleStateHasNoStep) {
    for (const Chain& ch : {make_chain({{1, 2, 3}}), make_chain({{0, 0}})}) {
        const CoeScores s = coe_scores(ch);
        EXPECT_EQ(s.status, kCoeNoStep);
        EXPECT_TRUE(s.m.empty());
        EXPECT_TRUE(s.a.empty());
        EXPECT_EQ(s.mag, 0);
        EXPECT_EQ(s.ang, 0);
        EXPECT_EQ(s.r, 0);
        EXPECT_EQ(s.c, 0);
    }
    EXPECT_EQ(coe_status_string(kCoeNoStep), "no_step");
}

TEST(CoeDegenerate, ZeroVectorsHaveAngleZero) {
    // Zero state in the middle: the angles next to it are 0; the endpoints are fine.
    const CoeScores mid = coe_scores(make_chain({{1, 0}, {0, 0}, {0, 2}}));
    EXPECT_EQ(mid.status, kCoeZeroNorm);
    EXPECT_EQ(mid.a, (std::vector<double>{0, 0}));
    EXPECT_NEAR(mid.endpoint_angle, kPi / 2, 1e-15);
    EXPECT_NEAR(mid.m[0], 1 / std::sqrt(5.0), 1e-15);
    EXPECT_NEAR(mid.m[1], 2 / std::sqrt(5.0), 1e-15);
    expect_finite(mid);

    // Zero start: the endpoint angle is 0 too, so the angle normaliser is 1.
    const CoeScores start = coe_scores(make_chain({{0, 0}, {1, 0}, {0, 3}}));
    EXPECT_EQ(start.status, kCoeZeroNorm | kCoeParallelEndpoints);
    EXPECT_EQ(start.endpoint_angle, 0);
    EXPECT_EQ(start.a[0], 0);
    EXPECT_NEAR(start.a[1], kPi / 2, 1e-15);  // raw radians
    EXPECT_EQ(coe_status_string(start.status), "zero_norm|parallel_endpoints");

    const CoeScores all = coe_scores(make_chain({{0, 0, 0}, {0, 0, 0}, {0, 0, 0}}));
    EXPECT_EQ(all.status, kCoeZeroNorm | kCoeEqualEndpoints | kCoeParallelEndpoints);
    EXPECT_EQ(all.mag + all.ang + all.r + all.c, 0);
}

TEST(CoeDegenerate, IdenticalEndpointsUseRawStepLengthsAndAngles) {
    // A loop back to the start: ||h_N - h_0|| = 0 and angle 0, both normalisers 1.
    const CoeScores s = coe_scores(make_chain({{1, 0}, {0, 1}, {1, 0}}));
    EXPECT_EQ(s.status, kCoeEqualEndpoints | kCoeParallelEndpoints);
    EXPECT_EQ(s.endpoint_dist, 0);
    EXPECT_EQ(s.endpoint_angle, 0);
    for (int i = 0; i < 2; ++i) {
        EXPECT_NEAR(s.m[i], std::sqrt(2.0), 1e-15);
        EXPECT_NEAR(s.a[i], kPi / 2, 1e-15);
    }
    expect_finite(s);

    // A constant chain: nothing moves, every score is 0.
    const CoeScores flat = coe_scores(make_chain({{3, -1, 2}, {3, -1, 2}, {3, -1, 2}, {3, -1, 2}}));
    EXPECT_EQ(flat.status, kCoeEqualEndpoints | kCoeParallelEndpoints);
    EXPECT_EQ(flat.mag + flat.ang + flat.r + flat.c, 0);
}

TEST(CoeDegenerate, ParallelEndpointsAndAngleSnapping) {
    // h_N = 3 h_0 in another direction than the path: the endpoint angle is rounding noise (snapped to 0).
    const CoeScores s = coe_scores(make_chain({{0.3, 0.7, -1.1}, {1, 1, 1}, {0.9, 2.1, -3.3}}));
    EXPECT_EQ(s.status, kCoeParallelEndpoints);
    EXPECT_EQ(s.endpoint_angle, 0);
    EXPECT_GT(s.endpoint_dist, 0);
    expect_finite(s);
    for (double a : s.a) EXPECT_LT(a, kPi + 1e-15);  // raw radians, not noise-amplified

    // Antiparallel endpoints are not degenerate: the normaliser is exactly pi.
    const CoeScores anti = coe_scores(make_chain({{1, 2}, {-2, 1}, {-3, -6}}));
    EXPECT_EQ(anti.status, kCoeOk);
    EXPECT_EQ(anti.endpoint_angle, kPi);

    // An angle below the snap threshold is 0; one above it is kept.
    const CoeScores tiny = coe_scores(make_chain({{1, 0}, {1, 1e-8}, {0, 1}}));
    EXPECT_EQ(tiny.a[0], 0);
    const CoeScores small = coe_scores(make_chain({{1, 0}, {1, 1e-4}, {0, 1}}));
    EXPECT_NEAR(small.a[0], std::atan(1e-4) / (kPi / 2), 1e-11);
}

TEST(CoeDegenerate, BadInputThrows) {
    const double nan = std::numeric_limits<double>::quiet_NaN(),
                 inf = std::numeric_limits<double>::infinity();
    const std::vector<double> ok = {1, 2, 3, 4};
    EXPECT_THROW(coe_scores(ok.data(), 0, 2), Error);
    EXPECT_THROW(coe_scores(ok.data(), 2, 0), Error);
    EXPECT_THROW(coe_scores((const double*)nullptr, 2, 2), Error);
    for (double bad : {nan, inf, -inf, 1e200}) {
        const std::vector<double> h = {1, 2, bad, 4};
        EXPECT_THROW(coe_scores(h.data(), 2, 2), Error) << bad;
    }
    const std::vector<float> fnan = {1, std::numeric_limits<float>::quiet_NaN()};
    EXPECT_THROW(coe_scores(fnan.data(), 1, 2), Error);
}

// ---- probability baselines --------------------------------------------------------------------------------

TEST(CoeProb, BaselinesByHand) {
    std::vector<StepStats> steps = {{0.5f, 0.5f, 1.0f}, {0.25f, 0.75f, 0.5f}};
    const ProbScores p = prob_scores(steps);
    EXPECT_NEAR(p.max_prob, 0.625, 1e-12);
    EXPECT_NEAR(p.inv_ppl, std::sqrt(0.5 * 0.25), 1e-12);  // geometric mean of the chosen probabilities
    EXPECT_NEAR(p.inv_entropy, 1 / 0.75, 1e-12);

    // A certain model: entropy 0, and a chosen probability that underflowed to 0.
    steps = {{1.0f, 1.0f, 0.0f}, {0.0f, 1.0f, 0.0f}};
    const ProbScores q = prob_scores(steps);
    EXPECT_EQ(q.inv_entropy, 1 / kCoeMinEntropy);
    EXPECT_TRUE(std::isfinite(q.inv_ppl));
    EXPECT_GT(q.inv_ppl, 0);
    EXPECT_NEAR(q.inv_ppl, std::sqrt((double)FLT_TRUE_MIN), 1e-30);

    const ProbScores none = prob_scores({});
    EXPECT_EQ(none.max_prob + none.inv_ppl + none.inv_entropy, 0);
}

// ---- streaming state --------------------------------------------------------------------------------------

TEST(CoeStreaming, StateBytesDoNotGrowWithLength) {
    ModelInfo mi;
    mi.n_layer = 4;
    mi.n_embd = 48;
    mi.n_head_kv = 2;
    mi.head_dim = 8;
    std::mt19937 rng(3);
    std::normal_distribution<float> g;
    std::vector<float> kv_row(mi.kv_width()), h_row(mi.n_embd);
    auto feed = [&](KvLayerCoe& kv, HiddenCoe& hs, int n_pos) {
        for (int p = 0; p < n_pos; ++p) {
            for (int l = 0; l < mi.n_layer; ++l) {
                for (float& x : kv_row) x = g(rng);
                kv.pool().add_k(l, kv_row.data());
                for (float& x : kv_row) x = g(rng);
                kv.pool().add_v(l, kv_row.data());
            }
            for (int l = -1; l < mi.n_layer; ++l) {
                for (float& x : h_row) x = g(rng);
                hs.add_row(l, h_row.data());
            }
        }
    };
    KvLayerCoe kv100(mi, 0, 10), kv2000(mi, 0, 10);
    HiddenCoe hs100(mi, 0, 10), hs2000(mi, 0, 10);
    const size_t kv_bytes0 = kv100.state_bytes(), hs_bytes0 = hs100.state_bytes();
    feed(kv100, hs100, 100);
    feed(kv2000, hs2000, 2000);
    EXPECT_EQ(kv100.count(), 100);
    EXPECT_EQ(kv2000.count(), 2000);
    EXPECT_EQ(hs2000.counts(), std::vector<int64_t>(mi.n_layer + 1, 2000));
    EXPECT_EQ(kv100.state_bytes(), kv2000.state_bytes());
    EXPECT_EQ(hs100.state_bytes(), hs2000.state_bytes());
    EXPECT_EQ(kv2000.state_bytes(), kv_bytes0);
    EXPECT_EQ(hs2000.state_bytes(), hs_bytes0);
    // Double running sums: L x 2 x kv_width for K/V, (L+1) x n_embd plus one count per state for the hidden.
    EXPECT_EQ(kv2000.state_bytes(), (size_t)mi.n_layer * 2 * mi.kv_width() * sizeof(double));
    EXPECT_EQ(hs2000.state_bytes(),
              (size_t)(mi.n_layer + 1) * (mi.n_embd * sizeof(double) + sizeof(int64_t)));
    EXPECT_EQ(hidden_trajectory_bytes(mi.n_layer, mi.n_embd, 2000), (size_t)5 * 48 * 4 * 2000);
    EXPECT_LT(hs2000.state_bytes(), hidden_trajectory_bytes(mi.n_layer, mi.n_embd, 2000));

    // The chains are readable and finite at any point.
    for (KvPart part : {KvPart::KV, KvPart::K, KvPart::V}) expect_finite(kv2000.scores(part));
    expect_finite(hs2000.scores());
    EXPECT_EQ(kv2000.chain(KvPart::KV).width, 2 * mi.kv_width());
    EXPECT_EQ(kv2000.chain(KvPart::K).width, mi.kv_width());
    EXPECT_EQ(hs2000.chain().n_states, mi.n_layer + 1);
}

TEST(CoeStreaming, KAndVChainsAreTheHalvesOfTheKvChain) {
    ModelInfo mi;
    mi.n_layer = 3;
    mi.n_embd = 8;
    mi.n_head_kv = 2;
    mi.head_dim = 4;
    KvLayerCoe kv(mi, 0, 1);
    std::vector<float> k(8), v(8);
    for (int l = 0; l < 3; ++l) {
        for (int i = 0; i < 8; ++i) {
            k[i] = (float)(l * 100 + i);
            v[i] = (float)(-l * 100 - i - 1);
        }
        kv.pool().add_v(l, v.data());  // V before K: any order
        kv.pool().add_k(l, k.data());
    }
    const Chain cat = kv.chain(KvPart::KV), kc = kv.chain(KvPart::K), vc = kv.chain(KvPart::V);
    ASSERT_EQ(cat.width, 16);
    for (int l = 0; l < 3; ++l) {
        for (int i = 0; i < 8; ++i) {
            EXPECT_EQ(kc.row(l)[i], l * 100 + i);
            EXPECT_EQ(vc.row(l)[i], -l * 100 - i - 1);
            EXPECT_EQ(cat.row(l)[i], kc.row(l)[i]);
            EXPECT_EQ(cat.row(l)[8 + i], vc.row(l)[i]);
        }
    }
    EXPECT_THROW(KvLayerCoe(mi, 0, 0), Error);
    EXPECT_THROW(HiddenCoe(mi, 0, 0), Error);
}

// ---- the token-axis chain ---------------------------------------------------------------------------------

// e_t for one position from its rows, in the order TokenCoe sums them (layers in order; heads in order).
std::vector<double> token_state(const std::vector<std::vector<float>>& k_rows,
                                const std::vector<std::vector<float>>& v_rows, const std::vector<int>& layers,
                                const TokenCoeSpec& spec, int H, int D) {
    const int pw = spec.head_agg == HeadAgg::Flatten ? H * D : D;
    const int n_parts = spec.kv_part == KvPart::KV ? 2 : 1;
    std::vector<double> e(n_parts * pw, 0.0);
    for (int l : layers) {
        for (int part = 0; part < 2; ++part) {
            if ((part == 0 && spec.kv_part == KvPart::V) || (part == 1 && spec.kv_part == KvPart::K))
                continue;
            const std::vector<float>& row = part == 0 ? k_rows[l] : v_rows[l];
            double* out = e.data() + (spec.kv_part == KvPart::KV && part == 1 ? pw : 0);
            if (spec.head_agg == HeadAgg::Flatten) {
                for (int j = 0; j < pw; ++j) out[j] += row[j];
            } else {
                for (int h = 0; h < H; ++h)
                    for (int j = 0; j < D; ++j) out[j] += (double)row[h * D + j] / H;
            }
        }
    }
    for (double& x : e) x /= (double)layers.size();
    return e;
}

std::vector<TokenCoeSpec> all_token_specs() {
    std::vector<TokenCoeSpec> specs;
    for (const char* layers : {"all", "-2..-1", "0,3"})
        for (KvPart part : {KvPart::KV, KvPart::K, KvPart::V})
            for (CoePositions pos : {CoePositions::Producer, CoePositions::Generated})
                for (HeadAgg head : {HeadAgg::Flatten, HeadAgg::Mean})
                    specs.push_back({layers, part, pos, head});
    return specs;
}

void expect_scores_equal(const CoeScores& got, const CoeScores& want) {
    EXPECT_EQ(got.status, want.status);
    EXPECT_EQ(got.r, want.r);
    EXPECT_EQ(got.c, want.c);
    EXPECT_EQ(got.mag, want.mag);
    EXPECT_EQ(got.ang, want.ang);
    EXPECT_EQ(got.m, want.m);
    EXPECT_EQ(got.a, want.a);
}

// Rows arrive as llama.cpp delivers them: per batch, layer by layer, V before K here, several positions per
// batch (including prompt positions before the chain's start). At every step the streamed scores equal the
// scores of the state matrix of the positions so far, bit for bit, for every knob.
TEST(TokenCoe, StreamedScoresEqualTheMatrixAtEveryStepForEveryKnob) {
    ModelInfo mi;
    mi.n_layer = 5;
    mi.n_embd = 16;
    mi.n_head_kv = 2;
    mi.head_dim = 4;
    const int W = mi.kv_width(), n_prompt = 4, n_pos = 13;
    std::mt19937 rng(11);
    std::normal_distribution<float> g;
    // rows[pos][layer]
    std::vector<std::vector<std::vector<float>>> K(n_pos), V(n_pos);
    for (int p = 0; p < n_pos; ++p) {
        for (int l = 0; l < mi.n_layer; ++l) {
            K[p].emplace_back(W);
            V[p].emplace_back(W);
            for (float& x : K[p][l]) x = g(rng);
            for (float& x : V[p][l]) x = g(rng);
        }
    }
    for (const TokenCoeSpec& spec : all_token_specs()) {
        SCOPED_TRACE(to_string(spec));
        TokenCoe tok(mi, 0, n_prompt, spec);
        const llama_pos begin = n_prompt - (spec.positions == CoePositions::Producer ? 1 : 0);
        std::vector<std::vector<double>> states;
        // Batches: the whole prompt, then one position at a time, then two at once.
        std::vector<std::pair<int, int>> batches = {{0, n_prompt}};
        for (int p = n_prompt; p < 9; ++p) batches.push_back({p, p + 1});
        batches.push_back({9, 11});
        batches.push_back({11, 13});
        for (const auto& [b0, b1] : batches) {
            for (int l = 0; l < mi.n_layer; ++l) {
                for (int p = b0; p < b1; ++p) tok.add_row(Tap::V, l, p, V[p][l].data());
                for (int p = b0; p < b1; ++p) tok.add_row(Tap::K, l, p, K[p][l].data());
            }
            for (int p = std::max(b0, (int)begin); p < b1; ++p)
                states.push_back(token_state(K[p], V[p], tok.layers(), spec, mi.n_head_kv, mi.head_dim));
            ASSERT_EQ(tok.count(), (int64_t)states.size());
            if (states.empty()) {
                EXPECT_EQ(tok.scores().status, kCoeNoStep);
                continue;
            }
            Chain ch;
            ch.n_states = (int)states.size();
            ch.width = tok.width();
            for (const auto& e : states) ch.data.insert(ch.data.end(), e.begin(), e.end());
            ASSERT_EQ((int)states[0].size(), ch.width);
            expect_scores_equal(tok.scores(), coe_scores(ch));
        }
        EXPECT_EQ(tok.count(), n_pos - begin);
    }
}

TEST(TokenCoe, WidthsLayersAndErrors) {
    ModelInfo mi;
    mi.n_layer = 6;
    mi.n_head_kv = 3;
    mi.head_dim = 4;
    EXPECT_EQ(TokenCoe(mi, 0, 1).width(), 4);  // the default: K, heads averaged
    EXPECT_EQ(TokenCoe(mi, 0, 1, {"all", KvPart::KV, CoePositions::Producer, HeadAgg::Flatten}).width(), 24);
    EXPECT_EQ(TokenCoe(mi, 0, 1, {"all", KvPart::K, CoePositions::Producer, HeadAgg::Flatten}).width(), 12);
    EXPECT_EQ(TokenCoe(mi, 0, 1, {"all", KvPart::KV, CoePositions::Producer, HeadAgg::Mean}).width(), 8);
    EXPECT_EQ(TokenCoe(mi, 0, 1, {"-4..-1", KvPart::V, CoePositions::Producer, HeadAgg::Mean}).layers(),
              (std::vector<int>{2, 3, 4, 5}));
    TokenCoe k_only(mi, 0, 1, {"0,5", KvPart::K, CoePositions::Producer, HeadAgg::Flatten});
    EXPECT_TRUE(k_only.wants(Tap::K, 5));
    EXPECT_FALSE(k_only.wants(Tap::V, 5));
    EXPECT_FALSE(k_only.wants(Tap::K, 3));
    EXPECT_FALSE(k_only.wants(Tap::Hidden, 0));
    EXPECT_THROW(TokenCoe(mi, 0, 1, {"6", KvPart::KV, CoePositions::Producer, HeadAgg::Flatten}), Error);
    EXPECT_THROW(TokenCoe(mi, 0, 1, {"1,1", KvPart::KV, CoePositions::Producer, HeadAgg::Flatten}), Error);
    EXPECT_THROW(TokenCoe(mi, 0, 1, {"x", KvPart::KV, CoePositions::Producer, HeadAgg::Flatten}), Error);
    EXPECT_THROW(TokenCoe(mi, 0, 0), Error);
    EXPECT_THROW(parse_coe_positions("prompt"), Error);
    EXPECT_EQ(parse_coe_positions("generated"), CoePositions::Generated);
    EXPECT_EQ(to_string(TokenCoeSpec{}), "layers=-4..-1 kv_part=k positions=producer head_agg=mean");
    // The last k layers of a shallower model: all of them; other out-of-range selections stay errors.
    EXPECT_EQ(TokenCoe(mi, 0, 1, {"-9..-1", KvPart::KV, CoePositions::Producer, HeadAgg::Flatten}).layers(),
              (std::vector<int>{0, 1, 2, 3, 4, 5}));
    EXPECT_THROW(TokenCoe(mi, 0, 1, {"-9..-2", KvPart::KV, CoePositions::Producer, HeadAgg::Flatten}), Error);
    EXPECT_THROW(TokenCoe(mi, 0, 1, {"-7,-1", KvPart::KV, CoePositions::Producer, HeadAgg::Flatten}), Error);
}

// O(width) plus 16 bytes per token: the two endpoint states and one (length, angle) pair per step.
TEST(TokenCoe, StateIsTwoStatesPlusSixteenBytesPerStep) {
    ModelInfo mi;
    mi.n_layer = 4;
    mi.n_head_kv = 2;
    mi.head_dim = 8;
    std::vector<float> row(mi.kv_width());
    for (int n : {100, 2000}) {
        TokenCoe tok(mi, 0, 1);
        for (int p = 0; p < n; ++p) {
            for (size_t i = 0; i < row.size(); ++i) row[i] = std::sin(0.1f * (float)(p * 17 + i));
            for (int l = 0; l < mi.n_layer; ++l) {
                tok.add_row(Tap::K, l, p, row.data());
                tok.add_row(Tap::V, l, p, row.data());
            }
        }
        EXPECT_EQ(tok.count(), n);
        EXPECT_EQ(tok.state_bytes(), 2 * (size_t)tok.width() * sizeof(double) + 16 * (size_t)(n - 1));
        expect_finite(tok.scores());
    }
}

// ---- on a model -------------------------------------------------------------------------------------------

const std::string kModel = std::string(KVLENS_TEST_MODELS_DIR) + "/tiny-qwen3.gguf";

struct CoeModel : testing::Test {
    static void SetUpTestSuite() {
        set_verbose(false);
        model = std::make_unique<Model>(ModelParams{kModel});
    }
    static void TearDownTestSuite() { model.reset(); }
    static std::unique_ptr<Model> model;

    static std::unique_ptr<Session> session(int n_seq_max = 1) {
        SessionParams sp;
        sp.n_ctx = 512;
        sp.n_seq_max = n_seq_max;
        return std::make_unique<Session>(*model, sp);
    }
};
std::unique_ptr<Model> CoeModel::model;

// Mean over producer positions of recorded rows, as a chain: states = (tap, layer) pairs in order.
Chain recompute(const RowRecorder& rec, const std::vector<std::pair<Tap, int>>& states, llama_pos p0,
                llama_pos p1, int width, int offset = 0, int take = -1) {
    if (take < 0) take = width;
    Chain ch;
    ch.n_states = (int)states.size();
    ch.width = take;
    for (const auto& [tap, layer] : states) {
        std::vector<double> mean(take, 0.0);
        for (llama_pos p = p0; p < p1; ++p) {
            const std::vector<float>* row = rec.get(tap, layer, 0, p);
            if (row == nullptr)
                throw Error("no recorded row for layer " + std::to_string(layer) + " pos " +
                            std::to_string(p));
            for (int i = 0; i < take; ++i) mean[i] += (*row)[offset + i];
        }
        for (double& x : mean) x /= (double)(p1 - p0);
        ch.data.insert(ch.data.end(), mean.begin(), mean.end());
    }
    return ch;
}

void expect_scores_near(const CoeScores& got, const CoeScores& want, double tol) {
    EXPECT_EQ(got.status, want.status);
    EXPECT_NEAR(got.mag, want.mag, tol);
    EXPECT_NEAR(got.ang, want.ang, tol);
    EXPECT_NEAR(got.r, want.r, tol);
    EXPECT_NEAR(got.c, want.c, tol);
    ASSERT_EQ(got.m.size(), want.m.size());
    for (size_t i = 0; i < got.m.size(); ++i) {
        EXPECT_NEAR(got.m[i], want.m[i], tol);
        EXPECT_NEAR(got.a[i], want.a[i], tol);
    }
}

TEST_F(CoeModel, StreamedScoresEqualARecomputationAndChangeDuringGeneration) {
    const ModelInfo& mi = model->info();
    auto s = session();
    const std::vector<llama_token> prompt = model->tokenize("The chain of embeddings tells", true);
    const int n_prompt = (int)prompt.size();
    CoeScorer scorer(*s, 0, n_prompt);
    RowRecorder rec({Tap::K, Tap::V, Tap::Hidden, Tap::Embd}, 0);
    s->capture().subscribe(&rec);

    GenerateParams gp;
    gp.max_tokens = 24;
    std::vector<CoeResult> mid;
    gp.on_token = [&](int, const Generation& g) {
        // Every forward pass so far produced one output token: the counts follow the tokens, in every state.
        EXPECT_EQ(scorer.kv_layer().count(), (int64_t)g.output.size());
        EXPECT_EQ(scorer.hidden().counts(), std::vector<int64_t>(mi.n_layer + 1, (int64_t)g.output.size()));
        mid.push_back(scorer.result(g.steps, g.output));
        return true;
    };
    const Generation g = generate(*s, {prompt}, gp).at(0);
    s->capture().unsubscribe(&rec);
    const int n_out = (int)g.output.size();
    ASSERT_GE(n_out, 4) << "the tiny model stopped too early for this test";
    ASSERT_EQ((int)mid.size(), n_out);

    const CoeResult fin = scorer.result(g.steps, g.output);
    EXPECT_EQ(fin.n_producer, n_out);
    EXPECT_EQ(scorer.hidden().counts(), std::vector<int64_t>(mi.n_layer + 1, n_out));
    // The last reading in on_token is taken before the last token would be fed back: it is the final state.
    EXPECT_EQ(mid.back().named(), fin.named());
    // Earlier readings see fewer positions, so different means and scores.
    EXPECT_NE(mid[1].kv.r, fin.kv.r);
    EXPECT_NE(mid[1].hs.r, fin.hs.r);
    EXPECT_NE(mid[1].prob.inv_ppl, fin.prob.inv_ppl);

    const auto named = fin.named();
    for (const char* key :
         {"kv_coe_r", "kv_coe_c", "kv_layer_coe_r", "kv_layer_coe_c", "k_layer_coe_r", "k_layer_coe_c",
          "v_layer_coe_r", "v_layer_coe_c", "hs_coe_r", "hs_coe_c", "kv_coe_mag", "hs_coe_ang", "max_prob",
          "inv_ppl", "inv_entropy", "neg_length", "answer_line_prob", "answer_line_min_prob"}) {
        ASSERT_EQ(named.count(key), 1u) << key;
        EXPECT_TRUE(std::isfinite(named.at(key))) << key;
    }
    EXPECT_EQ(named.size(), 26u);
    // The answer line from the same tokens and steps, through answer_line_scores itself.
    std::vector<std::string> pieces;
    for (llama_token t : g.output) pieces.push_back(model->detokenize({t}));
    const AnswerLineScores line = answer_line_scores(pieces, g.steps);
    EXPECT_GT(line.n_tokens, 0);
    EXPECT_EQ(named.at("answer_line_prob"), line.prob);
    EXPECT_EQ(named.at("answer_line_min_prob"), line.min_prob);
    EXPECT_LE(line.min_prob, line.prob);
    EXPECT_EQ(named.at("neg_length"), -(double)n_out);
    EXPECT_EQ((int)fin.kv_layer.m.size(), mi.n_layer - 1);
    // The token axis: one state per producer position, so n_out - 1 steps.
    EXPECT_EQ((int)fin.kv.m.size(), n_out - 1);
    EXPECT_EQ((int)fin.hs.m.size(), mi.n_layer);

    // Recompute from the recorded rows over the producer positions [n_prompt - 1, n_prompt + n_out - 1).
    const llama_pos p0 = n_prompt - 1, p1 = n_prompt + n_out - 1;
    // Producer positions only: the last generated token was never decoded, and the prompt tokens before the
    // last have no logits, hence no last-layer residual stream.
    EXPECT_EQ(rec.get(Tap::K, 0, 0, p1), nullptr);
    EXPECT_EQ(rec.get(Tap::Hidden, mi.n_layer - 1, 0, p0 - 1), nullptr);
    EXPECT_NE(rec.get(Tap::Hidden, mi.n_layer - 2, 0, p0 - 1), nullptr);

    const int W = mi.kv_width();
    std::vector<std::pair<Tap, int>> k_states, v_states, h_states = {{Tap::Embd, -1}};
    for (int l = 0; l < mi.n_layer; ++l) {
        k_states.push_back({Tap::K, l});
        v_states.push_back({Tap::V, l});
        h_states.push_back({Tap::Hidden, l});
    }
    const Chain k = recompute(rec, k_states, p0, p1, W), v = recompute(rec, v_states, p0, p1, W);
    Chain kv;
    kv.n_states = mi.n_layer;
    kv.width = 2 * W;
    for (int l = 0; l < mi.n_layer; ++l) {
        kv.data.insert(kv.data.end(), k.row(l), k.row(l) + W);
        kv.data.insert(kv.data.end(), v.row(l), v.row(l) + W);
    }
    const Chain hs = recompute(rec, h_states, p0, p1, mi.n_embd);

    // The KV pool hands out float means (relative rounding 6e-8); the hidden chain keeps double means.
    const Chain got_kv = scorer.kv_layer().chain(KvPart::KV), got_hs = scorer.hidden().chain();
    ASSERT_EQ(got_kv.data.size(), kv.data.size());
    for (size_t i = 0; i < kv.data.size(); ++i)
        EXPECT_NEAR(got_kv.data[i], kv.data[i], 1e-6 * (1 + std::fabs(kv.data[i])));
    ASSERT_EQ(got_hs.data.size(), hs.data.size());
    for (size_t i = 0; i < hs.data.size(); ++i)
        EXPECT_NEAR(got_hs.data[i], hs.data[i], 1e-12 * (1 + std::fabs(hs.data[i])));

    // The token axis from the same rows: after k tokens the streamed reading equals the chain of the first k
    // producer positions (the answer cut there), bit for bit.
    std::vector<double> token_rows;
    for (int n = 1; n <= n_out; ++n) {
        std::vector<std::vector<float>> K, V;
        for (int l = 0; l < mi.n_layer; ++l) {
            K.push_back(*rec.get(Tap::K, l, 0, p0 + n - 1));
            V.push_back(*rec.get(Tap::V, l, 0, p0 + n - 1));
        }
        const std::vector<double> e =
            token_state(K, V, scorer.token().layers(), TokenCoeSpec{}, mi.n_head_kv, mi.head_dim);
        token_rows.insert(token_rows.end(), e.begin(), e.end());
        SCOPED_TRACE("after " + std::to_string(n) + " tokens");
        expect_scores_equal(mid[n - 1].kv, coe_scores(token_rows.data(), n, (int)e.size()));
    }
    expect_scores_near(fin.kv_layer, coe_scores(kv), 1e-5);
    expect_scores_near(fin.k_layer, coe_scores(k), 1e-5);
    expect_scores_near(fin.v_layer, coe_scores(v), 1e-5);
    expect_scores_near(fin.hs, coe_scores(hs), 1e-10);

    const ProbScores prob = prob_scores(g.steps);
    EXPECT_EQ(fin.prob.max_prob, prob.max_prob);
    EXPECT_GT(prob.max_prob, 0);
    EXPECT_LE(prob.max_prob, 1);
    EXPECT_LE(prob.inv_ppl, prob.max_prob * (1 + 1e-6));  // greedy: p(chosen) = max prob; geo mean <= mean
}

TEST_F(CoeModel, BatchedSequencesEachGetTheirOwnScorer) {
    const std::vector<std::vector<llama_token>> prompts = {
        model->tokenize("First question, short", true),
        model->tokenize("A second and clearly longer question here", true)};
    GenerateParams gp;
    gp.max_tokens = 10;

    // Alone, one at a time.
    std::vector<CoeResult> single;
    for (const auto& p : prompts) {
        auto s = session();
        CoeScorer scorer(*s, 0, (int)p.size());
        const Generation g = generate(*s, {p}, gp).at(0);
        single.push_back(scorer.result(g.steps, g.output));
    }

    // Together, with a scorer per sequence.
    auto s = session(2);
    std::vector<std::unique_ptr<CoeScorer>> scorers;
    for (int i = 0; i < 2; ++i) scorers.push_back(std::make_unique<CoeScorer>(*s, i, (int)prompts[i].size()));
    const std::vector<Generation> gens = generate(*s, prompts, gp);
    for (int i = 0; i < 2; ++i) {
        SCOPED_TRACE("sequence " + std::to_string(i));
        const CoeResult r = scorers[i]->result(gens[i].steps, gens[i].output);
        EXPECT_EQ(r.n_producer, (int64_t)gens[i].output.size());
        EXPECT_EQ(scorers[i]->hidden().counts(),
                  std::vector<int64_t>(model->info().n_layer + 1, r.n_producer));
        EXPECT_EQ(r.n_producer, single[i].n_producer);
        // Batched kernels may round differently from single-sequence ones.
        for (const auto& [name, value] : r.named())
            EXPECT_NEAR(value, single[i].named().at(name), 1e-3) << name;
    }
    EXPECT_NE(single[0].kv.r, single[1].kv.r);

    // Scorers unsubscribe when they go.
    scorers.clear();
    EXPECT_TRUE(s->capture().empty());
}

}  // namespace

// On a real model (KVLENS_SMOLLM2 = SmolLM2-135M-Instruct gguf; skipped when unset): the chains are not
// degenerate, the hidden counts line up, and the streamed state is a small fraction of a stored trajectory.
TEST(CoeRealModel, SmolLM2ChainsAreRegular) {
    const char* path = std::getenv("KVLENS_SMOLLM2");
    if (path == nullptr || *path == '\0') GTEST_SKIP() << "KVLENS_SMOLLM2 is not set";
    set_verbose(false);
    Model model(ModelParams{path});
    const ModelInfo& mi = model.info();
    SessionParams sp;
    sp.n_ctx = 1024;
    Session s(model, sp);
    const std::vector<llama_token> prompt = model.tokenize(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", true);
    CoeScorer scorer(s, 0, (int)prompt.size());
    GenerateParams gp;
    gp.max_tokens = 48;
    const Generation g = generate(s, {prompt}, gp).at(0);
    const CoeResult r = scorer.result(g.steps, g.output);
    EXPECT_EQ(r.n_producer, (int64_t)g.output.size());
    EXPECT_EQ(scorer.hidden().counts(), std::vector<int64_t>(mi.n_layer + 1, r.n_producer));
    for (const CoeScores* c : {&r.kv, &r.kv_layer, &r.k_layer, &r.v_layer, &r.hs})
        EXPECT_EQ(c->status, kCoeOk);
    std::string line;
    for (const auto& [name, value] : r.named()) {
        EXPECT_TRUE(std::isfinite(value)) << name;
        line += name + "=" + std::to_string(value) + " ";
    }
    std::printf("%s| %d tokens: %s\n%s\nstate %zu bytes; stored hidden trajectory %zu bytes\n",
                mi.name.c_str(), (int)g.output.size(), g.text.c_str(), line.c_str(), scorer.state_bytes(),
                hidden_trajectory_bytes(mi.n_layer, mi.n_embd, r.n_producer));
}
