// Metrics against hand-computed values and against brute-force definitions (pairwise Mann-Whitney,
// per-positive precision, every threshold scanned). sklearn itself is the reference in
// tests/python/test_metrics_reference.py.
#include "eval/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "util/error.h"

namespace kvlens {
namespace {

using Scores = std::vector<double>;
using Labels = std::vector<int>;

// (pairs ranked right + half the tied pairs) / (P * N).
double brute_auroc(const Scores& s, const Labels& y) {
    double num = 0, pairs = 0;
    for (size_t i = 0; i < s.size(); ++i) {
        for (size_t j = 0; j < s.size(); ++j) {
            if (y[i] != 1 || y[j] != 0) continue;
            pairs += 1;
            num += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
        }
    }
    return num / pairs;
}

// Mean over positives of the precision at that positive's score (all samples scoring >= it are "predicted").
double brute_ap(const Scores& s, const Labels& y) {
    double sum = 0;
    int P = 0;
    for (size_t i = 0; i < s.size(); ++i) {
        if (!y[i]) continue;
        ++P;
        int tp = 0, all = 0;
        for (size_t j = 0; j < s.size(); ++j) {
            if (s[j] >= s[i]) {
                ++all;
                tp += y[j];
            }
        }
        sum += (double)tp / all;
    }
    return sum / P;
}

double brute_fpr95(const Scores& s, const Labels& y) {
    const int P = (int)std::count(y.begin(), y.end(), 1), N = (int)y.size() - P;
    double best = 1.0;
    for (double t : std::set<double>(s.begin(), s.end())) {
        int tp = 0, fp = 0;
        for (size_t j = 0; j < s.size(); ++j) {
            if (s[j] >= t) (y[j] ? tp : fp)++;
        }
        if ((double)tp / P >= 0.95) best = std::min(best, (double)fp / N);
    }
    return best;
}

// Scores on a coarse grid so that ties are common; labels with the given positive rate.
void random_case(std::mt19937_64& rng, size_t n, double pos_rate, int levels, Scores& s, Labels& y) {
    std::uniform_int_distribution<int> level(0, levels - 1);
    std::bernoulli_distribution pos(pos_rate);
    s.resize(n);
    y.resize(n);
    for (size_t i = 0; i < n; ++i) {
        y[i] = pos(rng) ? 1 : 0;
        // Integer grid / levels: equal grid values give equal doubles, so ties are exact. Positives shifted
        // up.
        s[i] = (level(rng) + (y[i] ? std::max(1, levels / 10) : 0)) / (double)levels;
    }
    y[0] = 1;  // both classes present
    y[1] = 0;
}

TEST(Metrics, HandComputed) {
    const Scores s{0.9, 0.8, 0.7, 0.6};
    const Labels y{1, 0, 1, 0};
    EXPECT_DOUBLE_EQ(auroc(s, y), 0.75);
    EXPECT_DOUBLE_EQ(aupr(s, y), 0.5 * 1.0 + 0.5 * (2.0 / 3.0));
    EXPECT_DOUBLE_EQ(fpr_at_95_tpr(s, y), 0.5);  // TPR reaches 1 at 0.7, where 1 of 2 negatives is above
    EXPECT_DOUBLE_EQ(accuracy(y), 0.5);
    const RocCurve roc = roc_curve(s, y);
    EXPECT_EQ(roc.fpr, (std::vector<double>{0, 0, 0.5, 0.5, 1}));
    EXPECT_EQ(roc.tpr, (std::vector<double>{0, 0.5, 0.5, 1, 1}));
    EXPECT_TRUE(std::isinf(roc.thresholds[0]));
    EXPECT_EQ(std::vector<double>(roc.thresholds.begin() + 1, roc.thresholds.end()), s);
}

TEST(Metrics, TiesFormOneThreshold) {
    const Scores s{0.5, 0.5, 0.5, 0.5};
    const Labels y{1, 0, 1, 0};
    EXPECT_DOUBLE_EQ(auroc(s, y), 0.5);
    EXPECT_DOUBLE_EQ(aupr(s, y), 0.5);
    EXPECT_DOUBLE_EQ(fpr_at_95_tpr(s, y), 1.0);
    EXPECT_EQ(roc_curve(s, y).fpr.size(), 2u);  // (0,0) and one point for the single distinct score

    // A tie between a positive and a negative counts half a pair.
    EXPECT_DOUBLE_EQ(auroc({0.9, 0.5, 0.5, 0.1}, {1, 1, 0, 0}), (2 + 1 + 0.5) / 4.0);
}

TEST(Metrics, PerfectAndReversed) {
    const Scores s{4, 3, 2, 1};
    const Labels y{1, 1, 0, 0};
    EXPECT_DOUBLE_EQ(auroc(s, y), 1.0);
    EXPECT_DOUBLE_EQ(aupr(s, y), 1.0);
    EXPECT_DOUBLE_EQ(fpr_at_95_tpr(s, y), 0.0);
    const Scores rev{1, 2, 3, 4};
    EXPECT_DOUBLE_EQ(auroc(rev, y), 0.0);
    EXPECT_DOUBLE_EQ(fpr_at_95_tpr(rev, y), 1.0);
}

TEST(Metrics, InfiniteScoresAreValid) {
    const double inf = INFINITY;
    EXPECT_DOUBLE_EQ(auroc({inf, -inf, 0.0, inf}, {1, 0, 0, 0}), (1 + 1 + 0.5) / 3.0);
}

TEST(Metrics, MatchBruteForceOnRandomTies) {
    std::mt19937_64 rng(7);
    for (size_t n : {5, 6, 17, 100, 400}) {
        for (double rate : {0.1, 0.5, 0.9}) {
            for (int levels : {3, 10, 100}) {
                Scores s;
                Labels y;
                random_case(rng, n, rate, levels, s, y);
                SCOPED_TRACE("n=" + std::to_string(n) + " rate=" + std::to_string(rate) +
                             " levels=" + std::to_string(levels));
                EXPECT_NEAR(auroc(s, y), brute_auroc(s, y), 1e-12);
                EXPECT_NEAR(aupr(s, y), brute_ap(s, y), 1e-12);
                EXPECT_EQ(fpr_at_95_tpr(s, y), brute_fpr95(s, y));
                const BinaryMetrics m = binary_metrics(s, y);
                EXPECT_EQ(m.n, (int)n);
                EXPECT_EQ(m.auroc, auroc(s, y));
                EXPECT_EQ(m.aupr, aupr(s, y));
                EXPECT_EQ(m.fpr95, fpr_at_95_tpr(s, y));
                EXPECT_EQ(m.accuracy, accuracy(y));
                EXPECT_EQ(m.n_correct, (int)std::count(y.begin(), y.end(), 1));
            }
        }
    }
}

TEST(Metrics, RankingMetricsIgnoreMonotoneTransforms) {
    std::mt19937_64 rng(3);
    Scores s;
    Labels y;
    random_case(rng, 200, 0.3, 20, s, y);
    Scores t(s.size());
    for (size_t i = 0; i < s.size(); ++i) t[i] = std::exp(3 * s[i]) - 5;
    EXPECT_NEAR(auroc(t, y), auroc(s, y), 1e-15);
    EXPECT_NEAR(aupr(t, y), aupr(s, y), 1e-15);
    EXPECT_EQ(fpr_at_95_tpr(t, y), fpr_at_95_tpr(s, y));
    // Negating the scores swaps the ranking: AUROC -> 1 - AUROC.
    for (double& v : t) v = -v;
    EXPECT_NEAR(auroc(t, y), 1.0 - auroc(s, y), 1e-15);
}

TEST(Metrics, DegenerateInputsGiveNaN) {
    const Scores empty;
    const Labels none;
    EXPECT_TRUE(std::isnan(auroc(empty, none)));
    EXPECT_TRUE(std::isnan(aupr(empty, none)));
    EXPECT_TRUE(std::isnan(fpr_at_95_tpr(empty, none)));
    EXPECT_TRUE(std::isnan(accuracy(none)));
    EXPECT_TRUE(roc_curve(empty, none).fpr.empty());
    for (int cls : {0, 1}) {
        const Scores s{0.1, 0.2, 0.3};
        const Labels y(3, cls);
        EXPECT_TRUE(std::isnan(auroc(s, y)));
        EXPECT_TRUE(std::isnan(aupr(s, y)));
        EXPECT_TRUE(std::isnan(fpr_at_95_tpr(s, y)));
        EXPECT_TRUE(roc_curve(s, y).tpr.empty());
        EXPECT_DOUBLE_EQ(accuracy(y), cls);
        const BinaryMetrics m = binary_metrics(s, y);
        EXPECT_EQ(m.n, 3);
        EXPECT_TRUE(std::isnan(m.auroc));
    }
}

TEST(Metrics, BadInputThrows) {
    EXPECT_THROW(auroc({0.1, 0.2}, {1}), Error);
    EXPECT_THROW(aupr({0.1, 0.2}, {1, 2}), Error);
    EXPECT_THROW(fpr_at_95_tpr({0.1, NAN}, {1, 0}), Error);
    EXPECT_THROW(accuracy({0, -1}), Error);
    EXPECT_THROW(bootstrap_auroc({0.1, 0.2}, {1, 0}, 0), Error);
    EXPECT_THROW(bootstrap_auroc({0.1, 0.2}, {1, 0}, 10, 0, 1.0), Error);
    try {
        roc_curve({0.1, 0.2, 0.3}, {1, 0, 3});
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "metrics: label 2 is 3 (expected 0 or 1)");
    }
}

// The bootstrap weights each index by its multiplicity; the same draws applied as explicit resampled vectors
// must give the same interval.
TEST(Metrics, BootstrapMatchesExplicitResampling) {
    std::mt19937_64 data_rng(11);
    Scores s;
    Labels y;
    random_case(data_rng, 60, 0.2, 8, s, y);
    const int B = 300;
    const uint64_t seed = 42;
    const AurocInterval ci = bootstrap_auroc(s, y, B, seed);

    std::mt19937_64 rng(seed);
    std::vector<double> kept;
    int skipped = 0;
    for (int r = 0; r < B; ++r) {
        Scores rs;
        Labels ry;
        for (size_t k = 0; k < s.size(); ++k) {
            const size_t i = rng() % s.size();
            rs.push_back(s[i]);
            ry.push_back(y[i]);
        }
        const double a = auroc(rs, ry);
        if (std::isnan(a)) {
            ++skipped;
        } else {
            kept.push_back(a);
        }
    }
    std::sort(kept.begin(), kept.end());
    auto pct = [&](double q) {
        const double pos = q * (kept.size() - 1);
        const size_t i = (size_t)pos;
        return kept[i] + (pos - i) * (kept[std::min(i + 1, kept.size() - 1)] - kept[i]);
    };
    EXPECT_EQ(ci.resamples, B);
    EXPECT_EQ(ci.skipped, skipped);
    EXPECT_NEAR(ci.lo, pct(0.025), 1e-12);
    EXPECT_NEAR(ci.hi, pct(0.975), 1e-12);
    const double a = auroc(s, y);
    EXPECT_LT(ci.lo, a);
    EXPECT_GT(ci.hi, a);
}

TEST(Metrics, BootstrapSeededAndSkipsOneClassResamples) {
    std::mt19937_64 data_rng(5);
    Scores s;
    Labels y;
    random_case(data_rng, 100, 0.5, 10, s, y);
    const AurocInterval a = bootstrap_auroc(s, y, 200, 1), b = bootstrap_auroc(s, y, 200, 1),
                        c = bootstrap_auroc(s, y, 200, 2);
    EXPECT_EQ(a.lo, b.lo);
    EXPECT_EQ(a.hi, b.hi);
    EXPECT_TRUE(a.lo != c.lo || a.hi != c.hi);
    EXPECT_EQ(a.skipped, 0);

    // Two samples: a resample has both classes with probability 1/2, and then AUROC is exactly 1.
    const AurocInterval two = bootstrap_auroc({1.0, 0.0}, {1, 0}, 1000, 9);
    EXPECT_GT(two.skipped, 400);
    EXPECT_LT(two.skipped, 600);
    EXPECT_EQ(two.lo, 1.0);
    EXPECT_EQ(two.hi, 1.0);

    const AurocInterval one = bootstrap_auroc({0.3, 0.4}, {1, 1}, 50);
    EXPECT_EQ(one.skipped, 50);
    EXPECT_TRUE(std::isnan(one.lo) && std::isnan(one.hi));
    const AurocInterval empty = bootstrap_auroc({}, {}, 50);
    EXPECT_TRUE(std::isnan(empty.lo));
}

}  // namespace
}  // namespace kvlens
