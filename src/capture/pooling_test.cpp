// KvPool against a plain reference: the reference keeps every row and applies method.md section 1 directly,
// one knob at a time, so the streaming code (running sums, ring buffer, per-part state) is checked against
// the definition rather than against itself.
#include "capture/pooling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "util/error.h"

namespace kvlens {
namespace {

using Rows = std::vector<std::vector<float>>;  // [position][H*D]

// All rows of one sequence: kv[layer][part][position], part 0 = K, 1 = V.
struct Sequence {
    int n_layer, H, D, n_pos;
    std::vector<std::vector<Rows>> kv;
};

Sequence random_sequence(int n_layer, int H, int D, int n_pos, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    Sequence seq{n_layer, H, D, n_pos, {}};
    seq.kv.assign(n_layer, std::vector<Rows>(2, Rows(n_pos, std::vector<float>(H * D))));
    for (int l = 0; l < n_layer; ++l) {
        for (int p = 0; p < 2; ++p) {
            // A per-(layer, part) offset keeps means away from zero, so relative errors mean something.
            const float offset = 0.5f * (float)(l + 1) * (p == 0 ? 1.0f : -1.0f);
            for (auto& row : seq.kv[l][p]) {
                for (float& x : row) x = offset + noise(rng);
            }
        }
    }
    return seq;
}

// ---- the reference ----------------------------------------------------------------------------------------

// pos_agg over the rows, restricted to the last `window` when window > 0.
std::vector<double> ref_positions(const Rows& all, PosAgg agg, int window) {
    const size_t width = all.empty() ? 0 : all[0].size();
    Rows rows = all;
    if (window > 0 && (int)rows.size() > window) rows.erase(rows.begin(), rows.end() - window);
    std::vector<double> out(width, 0.0);
    if (rows.empty()) return out;
    for (size_t i = 0; i < width; ++i) {
        switch (agg) {
            case PosAgg::First:
                out[i] = rows.front()[i];
                break;
            case PosAgg::Last:
                out[i] = rows.back()[i];
                break;
            case PosAgg::Sum:
            case PosAgg::Mean:
                for (const auto& r : rows) out[i] += r[i];
                if (agg == PosAgg::Mean) out[i] /= (double)rows.size();
                break;
        }
    }
    return out;
}

std::vector<double> ref_heads(const std::vector<double>& x, HeadAgg agg, int H, int D) {
    if (agg == HeadAgg::Flatten) return x;
    std::vector<double> out(D, 0.0);
    for (int d = 0; d < D; ++d) {
        for (int h = 0; h < H; ++h) out[d] += x[h * D + d] / H;
    }
    return out;
}

// The expected result rows for `spec` with its layer list already resolved to `layers`; `fed[l][p]` holds the
// rows given to the pool so far (possibly fewer than the sequence).
std::vector<std::vector<double>> reference(const PoolSpec& spec, const std::vector<int>& layers,
                                           const std::vector<std::vector<Rows>>& fed, int H, int D) {
    std::vector<std::vector<double>> per_layer;
    for (int l : layers) {
        std::vector<double> v;
        if (spec.kv_part != KvPart::V) {
            auto k = ref_heads(ref_positions(fed[l][0], spec.pos_agg, spec.window), spec.head_agg, H, D);
            v.insert(v.end(), k.begin(), k.end());
        }
        if (spec.kv_part != KvPart::K) {
            auto vv = ref_heads(ref_positions(fed[l][1], spec.pos_agg, spec.window), spec.head_agg, H, D);
            v.insert(v.end(), vv.begin(), vv.end());
        }
        per_layer.push_back(v);
    }

    std::vector<std::vector<double>> rows;
    const size_t w = per_layer[0].size();
    switch (spec.layer_agg) {
        case LayerAgg::None:
            rows = per_layer;
            break;
        case LayerAgg::Flatten:
            rows.emplace_back();
            for (const auto& v : per_layer) rows[0].insert(rows[0].end(), v.begin(), v.end());
            break;
        case LayerAgg::Last:
            rows.push_back(per_layer.back());
            break;
        case LayerAgg::Sum:
        case LayerAgg::Mean:
            rows.assign(1, std::vector<double>(w, 0.0));
            for (const auto& v : per_layer) {
                for (size_t i = 0; i < w; ++i) rows[0][i] += v[i];
            }
            if (spec.layer_agg == LayerAgg::Mean) {
                for (double& x : rows[0]) x /= (double)per_layer.size();
            }
            break;
    }
    if (spec.normalize) {
        for (auto& r : rows) {
            double norm = 0.0;
            for (double x : r) norm += x * x;
            norm = std::sqrt(norm);
            if (norm > 0.0) {
                for (double& x : r) x /= norm;
            }
        }
    }
    return rows;
}

// ---- feeding ----------------------------------------------------------------------------------------------

enum class Order { KThenV, VThenK, LayersReversed, LayerByLayer, RandomMerge };
const Order kOrders[] = {Order::KThenV, Order::VThenK, Order::LayersReversed, Order::LayerByLayer,
                         Order::RandomMerge};

struct Event {
    int layer, part, pos;
};

// Every (layer, part, position) of the first n_pos positions, in the given order. Positions stay in order
// within each (layer, part), which is all KvPool promises to need.
std::vector<Event> schedule(const Sequence& seq, int n_pos, Order order, unsigned seed) {
    std::vector<Event> ev;
    switch (order) {
        case Order::KThenV:
        case Order::VThenK:
        case Order::LayersReversed:
            for (int t = 0; t < n_pos; ++t) {
                for (int i = 0; i < seq.n_layer; ++i) {
                    const int l = order == Order::LayersReversed ? seq.n_layer - 1 - i : i;
                    const bool v_first = order != Order::KThenV;
                    ev.push_back({l, v_first ? 1 : 0, t});
                    ev.push_back({l, v_first ? 0 : 1, t});
                }
            }
            break;
        case Order::LayerByLayer:  // a whole prompt's K for one layer, then its V, then the next layer
            for (int l = 0; l < seq.n_layer; ++l) {
                for (int p = 0; p < 2; ++p) {
                    for (int t = 0; t < n_pos; ++t) ev.push_back({l, p, t});
                }
            }
            break;
        case Order::RandomMerge: {
            std::mt19937 rng(seed);
            std::vector<int> next(seq.n_layer * 2, 0);
            for (int left = seq.n_layer * 2 * n_pos; left > 0; --left) {
                int s;
                do s = (int)(rng() % next.size());
                while (next[s] == n_pos);
                ev.push_back({s / 2, s % 2, next[s]++});
            }
            break;
        }
    }
    return ev;
}

void feed(KvPool& pool, const Sequence& seq, int n_pos, Order order, unsigned seed = 1) {
    for (const Event& e : schedule(seq, n_pos, order, seed)) {
        const float* row = seq.kv[e.layer][e.part][e.pos].data();
        if (e.part == 0) {
            pool.add_k(e.layer, row);
        } else {
            pool.add_v(e.layer, row);
        }
    }
}

std::vector<std::vector<Rows>> first_positions(const Sequence& seq, int n_pos) {
    auto fed = seq.kv;
    for (auto& layer : fed) {
        for (auto& rows : layer) rows.resize(n_pos);
    }
    return fed;
}

void expect_matches(const Pooled& got, const std::vector<std::vector<double>>& want) {
    ASSERT_EQ(got.n_vectors, (int)want.size());
    ASSERT_EQ(got.width, (int)want[0].size());
    ASSERT_EQ(got.data.size(), want.size() * want[0].size());
    for (int r = 0; r < got.n_vectors; ++r) {
        double scale = 0.0;
        for (double x : want[r]) scale = std::max(scale, std::abs(x));
        for (int i = 0; i < got.width; ++i) {
            ASSERT_NEAR(got.row(r)[i], want[r][i], 1e-5 * scale) << "row " << r << " column " << i;
        }
    }
}

std::string describe(const PoolSpec& s, const std::string& layers) {
    return std::string("kv_part=") + to_string(s.kv_part) + " pos_agg=" + to_string(s.pos_agg) +
           " head_agg=" + to_string(s.head_agg) + " layer_agg=" + to_string(s.layer_agg) +
           " normalize=" + (s.normalize ? "1" : "0") + " window=" + std::to_string(s.window) +
           " layers=" + layers;
}

const KvPart kKvParts[] = {KvPart::K, KvPart::V, KvPart::KV};
const PosAgg kPosAggs[] = {PosAgg::Mean, PosAgg::Sum, PosAgg::Last, PosAgg::First};
const HeadAgg kHeadAggs[] = {HeadAgg::Flatten, HeadAgg::Mean};
const LayerAgg kLayerAggs[] = {LayerAgg::Flatten, LayerAgg::Mean, LayerAgg::Sum, LayerAgg::Last,
                               LayerAgg::None};

struct LayerCase {
    std::string text;
    std::vector<int> resolved;  // for a 4-layer model
};
const LayerCase kLayerCases[] = {{"all", {0, 1, 2, 3}}, {"-2..-1", {2, 3}}, {"2,0", {2, 0}}};

// ---- the streaming pool against the reference -------------------------------------------------------------

TEST(KvPool, MatchesReferenceForEveryCombination) {
    const int n_layer = 4, H = 3, D = 4, n_pos = 7;  // 7 positions > window 3
    const Sequence seq = random_sequence(n_layer, H, D, n_pos, 42);
    int combo = 0;
    for (KvPart kv : kKvParts) {
        for (PosAgg pa : kPosAggs) {
            for (HeadAgg ha : kHeadAggs) {
                for (LayerAgg la : kLayerAggs) {
                    for (bool norm : {false, true}) {
                        for (int window : {0, 3}) {
                            for (const LayerCase& lc : kLayerCases) {
                                PoolSpec spec{kv, pa, ha, la, norm, parse_layers(lc.text), window};
                                SCOPED_TRACE(describe(spec, lc.text));
                                KvPool pool(spec, n_layer, H, D);
                                ASSERT_EQ(pool.layers(), lc.resolved);
                                const Order order = kOrders[combo++ % std::size(kOrders)];
                                feed(pool, seq, n_pos, order, (unsigned)combo);

                                const auto want = reference(spec, lc.resolved, seq.kv, H, D);
                                const Pooled got = pool.result();
                                expect_matches(got, want);
                                EXPECT_EQ(got.width, pool.result_width());
                                EXPECT_EQ(got.n_vectors, pool.result_rows());
                                EXPECT_EQ(pool.count(), window > 0 ? window : n_pos);
                            }
                        }
                    }
                }
            }
        }
    }
}

TEST(KvPool, ResultAtEveryPrefixMatchesReference) {
    // The result can be read at any time: check it after each position, across the window boundary.
    const int n_layer = 3, H = 2, D = 3, n_pos = 6;
    const Sequence seq = random_sequence(n_layer, H, D, n_pos, 7);
    for (PosAgg pa : kPosAggs) {
        for (int window : {0, 1, 3}) {
            PoolSpec spec{KvPart::KV, pa, HeadAgg::Flatten, LayerAgg::None, false, {}, window};
            SCOPED_TRACE(describe(spec, "all"));
            KvPool pool(spec, n_layer, H, D);
            for (int t = 0; t < n_pos; ++t) {
                for (int l = 0; l < n_layer; ++l) {
                    pool.add_k(l, seq.kv[l][0][t].data());
                    pool.add_v(l, seq.kv[l][1][t].data());
                }
                expect_matches(pool.result(), reference(spec, {0, 1, 2}, first_positions(seq, t + 1), H, D));
                EXPECT_EQ(pool.count(), window > 0 ? std::min(t + 1, window) : t + 1);
            }
        }
    }
}

TEST(KvPool, FeedOrderDoesNotChangeTheResult) {
    const int n_layer = 5, H = 2, D = 4, n_pos = 9;
    const Sequence seq = random_sequence(n_layer, H, D, n_pos, 3);
    for (PosAgg pa : kPosAggs) {
        for (int window : {0, 4}) {
            PoolSpec spec{KvPart::KV, pa, HeadAgg::Flatten, LayerAgg::Flatten, false, {-1, 0, 2}, window};
            SCOPED_TRACE(describe(spec, "-1,0,2"));
            KvPool base(spec, n_layer, H, D);
            feed(base, seq, n_pos, Order::KThenV);
            const Pooled want = base.result();
            expect_matches(want, reference(spec, {4, 0, 2}, seq.kv, H, D));
            for (Order order : kOrders) {
                for (unsigned seed : {1u, 2u, 3u}) {
                    KvPool pool(spec, n_layer, H, D);
                    feed(pool, seq, n_pos, order, seed);
                    // Each (layer, part) sees the same rows in the same order, so the result is
                    // bit-identical.
                    EXPECT_EQ(pool.result().data, want.data) << "order " << (int)order << " seed " << seed;
                }
            }
        }
    }
}

TEST(KvPool, EmptyPoolGivesZeros) {
    const int n_layer = 4, H = 3, D = 2;
    for (KvPart kv : kKvParts) {
        for (PosAgg pa : kPosAggs) {
            for (HeadAgg ha : kHeadAggs) {
                for (LayerAgg la : kLayerAggs) {
                    for (bool norm : {false, true}) {
                        for (int window : {0, 3}) {
                            PoolSpec spec{kv, pa, ha, la, norm, {1, 3}, window};
                            SCOPED_TRACE(describe(spec, "1,3"));
                            const KvPool pool(spec, n_layer, H, D);
                            const Pooled got = pool.result();
                            const int part = ha == HeadAgg::Flatten ? H * D : D;
                            const int slot = kv == KvPart::KV ? 2 * part : part;
                            EXPECT_EQ(got.n_vectors, la == LayerAgg::None ? 2 : 1);
                            EXPECT_EQ(got.width, la == LayerAgg::Flatten ? 2 * slot : slot);
                            EXPECT_EQ(got.data, std::vector<float>((size_t)got.n_vectors * got.width, 0.0f));
                            EXPECT_EQ(pool.count(), 0);
                        }
                    }
                }
            }
        }
    }
}

TEST(KvPool, OneRowIsItsOwnPool) {
    const int n_layer = 2, H = 2, D = 3;
    const Sequence seq = random_sequence(n_layer, H, D, 1, 11);
    for (PosAgg pa : kPosAggs) {
        for (int window : {0, 3}) {
            PoolSpec spec{KvPart::KV, pa, HeadAgg::Flatten, LayerAgg::None, false, {}, window};
            SCOPED_TRACE(describe(spec, "all"));
            KvPool pool(spec, n_layer, H, D);
            feed(pool, seq, 1, Order::VThenK);
            const Pooled got = pool.result();
            EXPECT_EQ(pool.count(), 1);
            for (int l = 0; l < n_layer; ++l) {
                std::vector<float> want = seq.kv[l][0][0];
                want.insert(want.end(), seq.kv[l][1][0].begin(), seq.kv[l][1][0].end());
                EXPECT_EQ(std::vector<float>(got.row(l), got.row(l) + got.width), want) << "layer " << l;
            }
        }
    }
}

TEST(KvPool, NormalizeGivesUnitRows) {
    const int n_layer = 4, H = 2, D = 8, n_pos = 5;
    const Sequence seq = random_sequence(n_layer, H, D, n_pos, 5);
    for (LayerAgg la : kLayerAggs) {
        for (HeadAgg ha : kHeadAggs) {
            PoolSpec spec{KvPart::KV, PosAgg::Sum, ha, la, true, {}, 0};
            SCOPED_TRACE(describe(spec, "all"));
            KvPool pool(spec, n_layer, H, D);
            feed(pool, seq, n_pos, Order::KThenV);
            const Pooled got = pool.result();
            for (int r = 0; r < got.n_vectors; ++r) {
                double norm = 0.0;
                for (int i = 0; i < got.width; ++i) norm += (double)got.row(r)[i] * got.row(r)[i];
                EXPECT_NEAR(std::sqrt(norm), 1.0, 1e-6) << "row " << r;
            }
        }
    }
    // A zero row stays zero (no NaN from 0/0).
    PoolSpec spec{KvPart::K, PosAgg::Mean, HeadAgg::Flatten, LayerAgg::None, true, {0, 1}, 0};
    KvPool pool(spec, n_layer, H, D);
    const std::vector<float> zero(H * D, 0.0f);
    pool.add_k(0, zero.data());
    pool.add_k(1, seq.kv[1][0][0].data());
    const Pooled got = pool.result();
    EXPECT_EQ(std::vector<float>(got.row(0), got.row(0) + got.width), zero);
    double norm1 = 0.0;
    for (int i = 0; i < got.width; ++i) norm1 += (double)got.row(1)[i] * got.row(1)[i];
    EXPECT_NEAR(std::sqrt(norm1), 1.0, 1e-6);
}

TEST(KvPool, StateIsBoundedAndIndependentOfLength) {
    const int n_layer = 6, H = 2, D = 8, w = H * D;
    const Sequence seq = random_sequence(n_layer, H, D, 2000, 9);
    for (KvPart kv : kKvParts) {
        for (PosAgg pa : kPosAggs) {
            for (int window : {0, 5}) {
                PoolSpec spec{kv, pa, HeadAgg::Flatten, LayerAgg::Mean, false, {-3, 0}, window};
                SCOPED_TRACE(describe(spec, "-3,0"));
                KvPool pool(spec, n_layer, H, D);
                // What each pos_agg needs per (layer, part): a double sum, one float row, or the float ring.
                size_t per_row = 0;
                if (pa == PosAgg::Last) {
                    per_row = w * sizeof(float);
                } else if (window > 0) {
                    per_row = (size_t)window * w * sizeof(float);
                } else if (pa == PosAgg::First) {
                    per_row = w * sizeof(float);
                } else {
                    per_row = w * sizeof(double);
                }
                const size_t want = 2 * (kv == KvPart::KV ? 2 : 1) * per_row;
                EXPECT_EQ(pool.state_bytes(), want);
                feed(pool, seq, 100, Order::KThenV);
                EXPECT_EQ(pool.state_bytes(), want);
                pool.reset();
                feed(pool, seq, 2000, Order::KThenV);
                EXPECT_EQ(pool.state_bytes(), want);
                EXPECT_EQ(pool.count(), window > 0 ? window : 2000);
            }
        }
    }
}

TEST(KvPool, ResetStartsOver) {
    const int n_layer = 3, H = 2, D = 2;
    const Sequence a = random_sequence(n_layer, H, D, 6, 1), b = random_sequence(n_layer, H, D, 4, 2);
    for (PosAgg pa : kPosAggs) {
        for (int window : {0, 3}) {
            PoolSpec spec{KvPart::KV, pa, HeadAgg::Mean, LayerAgg::None, false, {}, window};
            SCOPED_TRACE(describe(spec, "all"));
            KvPool pool(spec, n_layer, H, D), fresh(spec, n_layer, H, D);
            feed(pool, a, 6, Order::KThenV);
            pool.reset();
            EXPECT_EQ(pool.count(), 0);
            EXPECT_EQ(pool.result().data, fresh.result().data);
            feed(pool, b, 4, Order::KThenV);
            feed(fresh, b, 4, Order::KThenV);
            EXPECT_EQ(pool.result().data, fresh.result().data);
        }
    }
}

TEST(KvPool, CountFollowsTheFirstSelectedLayerAndPart) {
    const int n_layer = 3, H = 1, D = 2;
    const std::vector<float> row(H * D, 1.0f);
    PoolSpec spec{KvPart::KV, PosAgg::Mean, HeadAgg::Flatten, LayerAgg::None, false, {2, 0}, 0};
    KvPool pool(spec, n_layer, H, D);
    pool.add_k(0, row.data());
    pool.add_v(2, row.data());
    EXPECT_EQ(pool.count(), 0);
    pool.add_k(2, row.data());
    EXPECT_EQ(pool.count(), 1);
    pool.add_k(1, row.data());  // not selected: ignored
    EXPECT_EQ(pool.count(), 1);

    spec.kv_part = KvPart::V;
    KvPool v_only(spec, n_layer, H, D);
    v_only.add_k(2, row.data());  // K is not used: ignored
    EXPECT_EQ(v_only.count(), 0);
    v_only.add_v(2, row.data());
    EXPECT_EQ(v_only.count(), 1);
}

TEST(KvPool, SelectionQueries) {
    PoolSpec spec;
    spec.kv_part = KvPart::K;
    spec.layers = {-1, 1};
    KvPool pool(spec, 4, 2, 2);
    EXPECT_EQ(pool.layers(), (std::vector<int>{3, 1}));
    EXPECT_TRUE(pool.uses_layer(3));
    EXPECT_TRUE(pool.uses_layer(1));
    EXPECT_FALSE(pool.uses_layer(0));
    EXPECT_FALSE(pool.uses_layer(-1));
    EXPECT_FALSE(pool.uses_layer(4));
    EXPECT_TRUE(pool.uses_k());
    EXPECT_FALSE(pool.uses_v());
    spec.kv_part = KvPart::KV;
    EXPECT_TRUE(KvPool(spec, 4, 2, 2).uses_v());
}

// ---- errors -----------------------------------------------------------------------------------------------

template <typename F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

TEST(KvPool, LayersOutOfRangeOrDuplicated) {
    auto make = [](std::vector<int> layers) {
        PoolSpec spec;
        spec.layers = std::move(layers);
        return [spec] { KvPool(spec, 30, 2, 4); };
    };
    EXPECT_EQ(error_of(make({40})), "layers: layer 40 out of range for a 30-layer model");
    EXPECT_EQ(error_of(make({0, 30})), "layers: layer 30 out of range for a 30-layer model");
    EXPECT_EQ(error_of(make({-31})), "layers: layer -31 out of range for a 30-layer model");
    EXPECT_EQ(error_of(make({2, -28})), "layers: layer 2 selected twice (as 2 and -28)");
    EXPECT_EQ(error_of(make({5, 5})), "layers: layer 5 selected twice (as 5 and 5)");
    EXPECT_EQ(error_of(make({0, -30, 29})), "layers: layer 0 selected twice (as 0 and -30)");
    EXPECT_NO_THROW(make({-30, 29})());

    PoolSpec spec;
    spec.window = -1;
    EXPECT_EQ(error_of([&] { KvPool(spec, 30, 2, 4); }), "window: bad value -1 (expected >= 0)");
    spec.window = 0;
    EXPECT_THROW(KvPool(spec, 0, 2, 4), Error);
    EXPECT_THROW(KvPool(spec, 30, 0, 4), Error);
    EXPECT_THROW(KvPool(spec, 30, 2, -1), Error);

    KvPool pool(spec, 30, 2, 4);
    const std::vector<float> row(8, 0.0f);
    EXPECT_EQ(error_of([&] { pool.add_k(30, row.data()); }),
              "pooling: layer 30 out of range for a 30-layer model");
    EXPECT_THROW(pool.add_v(-1, row.data()), Error);
}

TEST(PoolParse, KnobNamesRoundTrip) {
    for (KvPart v : kKvParts) EXPECT_EQ(parse_kv_part(to_string(v)), v);
    for (PosAgg v : kPosAggs) EXPECT_EQ(parse_pos_agg(to_string(v)), v);
    for (HeadAgg v : kHeadAggs) EXPECT_EQ(parse_head_agg(to_string(v)), v);
    for (LayerAgg v : kLayerAggs) EXPECT_EQ(parse_layer_agg(to_string(v)), v);
    EXPECT_STREQ(to_string(KvPart::KV), "kv_cat");
    EXPECT_STREQ(to_string(PosAgg::First), "first");
    EXPECT_STREQ(to_string(HeadAgg::Mean), "mean");
    EXPECT_STREQ(to_string(LayerAgg::None), "none");
}

TEST(PoolParse, UnknownKnobValues) {
    EXPECT_EQ(error_of([] { parse_kv_part("kv"); }), "kv_part: unknown value 'kv' (expected k, v, kv_cat)");
    EXPECT_EQ(error_of([] { parse_pos_agg("avg"); }),
              "pos_agg: unknown value 'avg' (expected mean, sum, last, first)");
    EXPECT_EQ(error_of([] { parse_head_agg("max"); }),
              "head_agg: unknown value 'max' (expected flatten, mean)");
    EXPECT_EQ(error_of([] { parse_layer_agg("concat"); }),
              "layer_agg: unknown value 'concat' (expected flatten, mean, sum, last, none)");
    // Exact names only: no case folding, no empty value.
    EXPECT_THROW(parse_kv_part("K"), Error);
    EXPECT_THROW(parse_pos_agg(""), Error);
    EXPECT_THROW(parse_head_agg("Flatten"), Error);
    EXPECT_THROW(parse_layer_agg(" mean"), Error);
}

TEST(PoolParse, Layers) {
    using V = std::vector<int>;
    EXPECT_EQ(parse_layers("all"), V{});
    EXPECT_EQ(parse_layers("3"), V{3});
    EXPECT_EQ(parse_layers("-1"), V{-1});
    EXPECT_EQ(parse_layers("0,3,-1"), (V{0, 3, -1}));
    EXPECT_EQ(parse_layers("-4..-1"), (V{-4, -3, -2, -1}));
    EXPECT_EQ(parse_layers("0,2..4"), (V{0, 2, 3, 4}));
    EXPECT_EQ(parse_layers("5..5"), V{5});
    EXPECT_EQ(parse_layers("2,0"), (V{2, 0}));
    EXPECT_EQ(parse_layers(" 1, 2 ..3 "), (V{1, 2, 3}));
}

TEST(PoolParse, LayerSyntaxErrors) {
    for (const char* bad :
         {"",      " ",   "x",      "1,,2", "1,", ",1",    "1..", "..2",     "1...2", "3..1", "0..-1",
          "-1..0", "1,1", "0..2,1", "1-2",  "+1", "all,1", "1.5", "9999999", "--1",   "0x3"}) {
        const std::string msg = error_of([&] { parse_layers(bad); });
        EXPECT_EQ(msg.rfind("layers: bad value '" + std::string(bad) + "'", 0), 0u) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
    EXPECT_EQ(
        error_of([] { parse_layers("1,x"); }),
        "layers: bad value '1,x' ('x' is not a layer index; expected 'all', a list like 0,3,-1 or ranges "
        "like -4..-1)");
}

}  // namespace
}  // namespace kvlens
