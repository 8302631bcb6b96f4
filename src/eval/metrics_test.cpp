// Metrics against hand-computed values and against brute-force definitions (pairwise Mann-Whitney,
// per-positive precision, every threshold scanned). sklearn itself is the reference in
// tests/python/test_metrics_reference.py.
#include "eval/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
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

TEST(Metrics, BootstrapAurocDifference) {
    std::mt19937 rng(5);
    std::normal_distribution<double> g;
    std::vector<double> a, neg, noise;
    std::vector<int> y;
    for (int i = 0; i < 120; ++i) {
        y.push_back(i % 3 == 0);
        a.push_back(g(rng) + y.back());
        neg.push_back(-a.back());
        noise.push_back(std::round(g(rng) * 2));  // with ties
    }
    // A score against itself: every paired difference is 0.
    const AurocInterval self = bootstrap_auroc_difference(a, a, y, 300, 7);
    EXPECT_EQ(self.lo, 0.0);
    EXPECT_EQ(self.hi, 0.0);
    // Against its negation: AUROC(-a) = 1 - AUROC(a) in every resample, so the difference is 2 AUROC(a) - 1
    // there, and the interval is the affine image of bootstrap_auroc's (same seed, same draws).
    const AurocInterval one = bootstrap_auroc(a, y, 300, 7),
                        d = bootstrap_auroc_difference(a, neg, y, 300, 7);
    EXPECT_NEAR(d.lo, 2 * one.lo - 1, 1e-12);
    EXPECT_NEAR(d.hi, 2 * one.hi - 1, 1e-12);
    const AurocInterval n = bootstrap_auroc_difference(a, noise, y, 300, 7);
    EXPECT_GT(n.lo, 0.0);  // a real signal against noise
    EXPECT_THROW(bootstrap_auroc_difference(a, {1.0}, y), Error);
}

TEST(Metrics, BootstrapMeanDifference) {
    // 60 items: a right on the first 40, b on the first 25: the difference is 15/60 in the data.
    std::vector<int> a(60, 0), b(60, 0);
    for (int i = 0; i < 40; ++i) a[i] = 1;
    for (int i = 0; i < 25; ++i) b[i] = 1;
    const AurocInterval d = bootstrap_mean_difference(a, b, 2000, 3);
    EXPECT_EQ(d.skipped, 0);
    EXPECT_LT(d.lo, 0.25);
    EXPECT_GT(d.hi, 0.25);
    // Normal approximation of a paired difference: sd = sqrt(p (1 - p) / n) with p = 15/60 discordant items
    // all in a's favour; the percentile interval is within a few thousandths of +-1.96 sd.
    const double sd = std::sqrt(0.25 * 0.75 / 60);
    EXPECT_NEAR(d.lo, 0.25 - 1.96 * sd, 0.03);
    EXPECT_NEAR(d.hi, 0.25 + 1.96 * sd, 0.03);
    // Paired: identical outcomes give exactly 0, however mixed they are.
    std::vector<int> mixed = {1, 0, 0, 1, 1, 0, 1, 0, 1, 1};
    const AurocInterval zero = bootstrap_mean_difference(mixed, mixed, 200, 1);
    EXPECT_EQ(zero.lo, 0.0);
    EXPECT_EQ(zero.hi, 0.0);
    // Swapping the arguments mirrors the interval (same draws).
    const AurocInterval back = bootstrap_mean_difference(b, a, 2000, 3);
    EXPECT_NEAR(back.lo, -d.hi, 1e-12);
    EXPECT_NEAR(back.hi, -d.lo, 1e-12);
    EXPECT_THROW(bootstrap_mean_difference(a, {1}), Error);
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

// LM-Polygraph's PredictionRejectionArea for one fixed order (best first): mean over k of the accuracy of
// the first k.
double polygraph_area(const std::vector<size_t>& order, const Labels& y) {
    double sum = 0;
    int correct = 0;
    for (size_t k = 0; k < order.size(); ++k) {
        correct += y[order[k]];
        sum += (double)correct / (double)(k + 1);
    }
    return sum / (double)order.size();
}

// PRR as the mean over every order that ranks the scores descending (all tie-breaks), from the definition.
double brute_prr(const Scores& s, const Labels& y) {
    const size_t n = s.size();
    const int P = (int)std::count(y.begin(), y.end(), 1);
    const double random = (double)P / (double)n;
    std::vector<size_t> oracle(n);
    std::iota(oracle.begin(), oracle.end(), size_t{0});
    std::stable_sort(oracle.begin(), oracle.end(), [&](size_t a, size_t b) { return y[a] > y[b]; });
    const double best = polygraph_area(oracle, y);
    std::vector<size_t> perm(n);
    std::iota(perm.begin(), perm.end(), size_t{0});
    double sum = 0;
    int orders = 0;
    do {
        bool descending = true;
        for (size_t k = 1; k < n; ++k) descending = descending && s[perm[k - 1]] >= s[perm[k]];
        if (!descending) continue;
        sum += polygraph_area(perm, y);
        ++orders;
    } while (std::next_permutation(perm.begin(), perm.end()));
    return (sum / orders - random) / (best - random);
}

TEST(Prr, PerfectReversedConstant) {
    const Labels y{1, 1, 0, 0, 1, 0};
    EXPECT_DOUBLE_EQ(prr({6, 5, 1, 2, 4, 3}, y), 1.0);
    // With balanced classes the reversed curve mirrors the oracle's around the accuracy.
    EXPECT_DOUBLE_EQ(prr({1, 2, 6, 5, 3, 4}, y), -1.0);
    EXPECT_NEAR(prr(Scores(6, 0.25), y), 0.0, 1e-15);
    // Imbalanced: area 23/48 (0, 1/2, 2/3, 3/4 averaged), random 36/48, oracle 45/48.
    EXPECT_DOUBLE_EQ(prr({1, 2, 3, 4}, {1, 1, 1, 0}), -13.0 / 9.0);
}

TEST(Prr, HandComputedWithTies) {
    // Order 0.9 (correct), then 0.5 x {correct, wrong}, then 0.1 (wrong). The tied pair contributes half a
    // correct answer at k = 2: acc = 1, 1.5/2, 2/3, 2/4; area = 35/48; random 1/2; oracle (1+1+2/3+1/2)/4.
    const double area = (1.0 + 0.75 + 2.0 / 3.0 + 0.5) / 4.0, oracle = (2.0 + 2.0 / 3.0 + 0.5) / 4.0;
    EXPECT_DOUBLE_EQ(prr({0.9, 0.5, 0.5, 0.1}, {1, 1, 0, 0}), (area - 0.5) / (oracle - 0.5));
    EXPECT_DOUBLE_EQ(prr({0.9, 0.5, 0.5, 0.1}, {1, 0, 1, 0}), (area - 0.5) / (oracle - 0.5));
}

TEST(Prr, TiesAreTheMeanOverTieBreaks) {
    std::mt19937_64 rng(13);
    for (int trial = 0; trial < 40; ++trial) {
        Scores s;
        Labels y;
        random_case(rng, 4 + trial % 4, trial % 2 ? 0.3 : 0.6, 2 + trial % 3, s, y);
        SCOPED_TRACE("trial " + std::to_string(trial));
        EXPECT_NEAR(prr(s, y), brute_prr(s, y), 1e-12);
        // The input order does not matter, bit for bit.
        std::vector<size_t> idx(s.size());
        std::iota(idx.begin(), idx.end(), size_t{0});
        std::shuffle(idx.begin(), idx.end(), rng);
        Scores s2;
        Labels y2;
        for (size_t i : idx) {
            s2.push_back(s[i]);
            y2.push_back(y[i]);
        }
        EXPECT_EQ(prr(s2, y2), prr(s, y));
    }
}

TEST(Prr, DegenerateAndInBinaryMetrics) {
    EXPECT_TRUE(std::isnan(prr({}, {})));
    EXPECT_TRUE(std::isnan(prr({0.1, 0.2}, {1, 1})));
    EXPECT_TRUE(std::isnan(prr({0.1, 0.2}, {0, 0})));
    EXPECT_THROW(prr({0.1, NAN}, {1, 0}), Error);
    std::mt19937_64 rng(2);
    Scores s;
    Labels y;
    random_case(rng, 300, 0.4, 20, s, y);
    EXPECT_EQ(binary_metrics(s, y).prr, prr(s, y));
    EXPECT_GT(prr(s, y), 0.0);  // random_case shifts the positives up
}

// Mann-Whitney over the pairs whose bins (floor(#strictly shorter * n_bins / n)) agree.
double brute_within_bins(const Scores& s, const Labels& y, const std::vector<double>& len, int n_bins) {
    const size_t n = s.size();
    std::vector<size_t> bin(n);
    for (size_t i = 0; i < n; ++i) {
        size_t shorter = 0;
        for (size_t j = 0; j < n; ++j) shorter += len[j] < len[i];
        bin[i] = shorter * (size_t)n_bins / n;
    }
    double num = 0, pairs = 0;
    for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < n; ++j) {
            if (y[i] != 1 || y[j] != 0 || bin[i] != bin[j]) continue;
            pairs += 1;
            num += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
        }
    }
    return pairs ? num / pairs : NAN;
}

TEST(LengthBins, LengthExplainsTheWholeAuroc) {
    // Short answers score high and are mostly correct; within a length the score is a coin flip.
    const Scores s{0.9, 0.8, 0.85, 0.2, 0.1, 0.15};
    const Labels y{1, 1, 0, 0, 0, 1};
    const std::vector<double> len{10, 10, 10, 20, 20, 20};
    EXPECT_DOUBLE_EQ(auroc(s, y), 6.0 / 9.0);
    EXPECT_DOUBLE_EQ(auroc_within_bins(s, y, len, 2), 0.5);  // (1 of 2) + (1 of 2) pairs
    EXPECT_EQ(auroc_within_bins(s, y, len, 1), auroc(s, y));
}

TEST(LengthBins, TiedLengthsShareABin) {
    // 4 bins over 4 samples would split every sample off; the three of length 5 stay together (bin 0).
    const Scores s{0.3, 0.2, 0.1, 0.9};
    const Labels y{1, 0, 0, 1};
    EXPECT_DOUBLE_EQ(auroc_within_bins(s, y, {5, 5, 5, 9}, 4), 1.0);
    EXPECT_TRUE(std::isnan(auroc_within_bins(s, y, {5, 6, 7, 9}, 4)));  // every bin has one sample
    // No bin with both classes.
    EXPECT_TRUE(std::isnan(auroc_within_bins({1, 2, 3, 4}, {1, 1, 0, 0}, {1, 1, 2, 2}, 2)));
    EXPECT_TRUE(std::isnan(auroc_within_bins({}, {}, {}, 3)));
}

TEST(LengthBins, MatchBruteForce) {
    std::mt19937_64 rng(17);
    std::uniform_int_distribution<int> length(1, 12);
    for (size_t n : {5, 13, 60, 200}) {
        for (int n_bins : {1, 2, 3, 7, 50, 1000}) {
            Scores s;
            Labels y;
            random_case(rng, n, 0.5, 6, s, y);
            std::vector<double> len(n);
            for (double& l : len) l = length(rng);  // few distinct lengths: many ties
            SCOPED_TRACE("n=" + std::to_string(n) + " bins=" + std::to_string(n_bins));
            const double want = brute_within_bins(s, y, len, n_bins);
            const double got = auroc_within_bins(s, y, len, n_bins);
            if (std::isnan(want)) {
                EXPECT_TRUE(std::isnan(got));
            } else {
                EXPECT_NEAR(got, want, 1e-12);
            }
        }
    }
}

TEST(LengthBins, BadInputThrows) {
    EXPECT_THROW(auroc_within_bins({0.1, 0.2}, {1, 0}, {1}, 2), Error);
    EXPECT_THROW(auroc_within_bins({0.1, 0.2}, {1, 0}, {1, 2}, 0), Error);
    EXPECT_THROW(auroc_within_bins({0.1, 0.2}, {1, 2}, {1, 2}, 2), Error);
    try {
        auroc_within_bins({0.1, 0.2}, {1, 0}, {1, NAN}, 2);
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "auroc_within_bins: length 1 is NaN");
    }
}

TEST(LengthResidualFit, ExactLineAndDevToTest) {
    const std::vector<double> len{1, 3, 10, 40, 200};
    Scores s;
    for (double l : len) s.push_back(-0.5 * std::log(l) + 2.0);
    const LengthResidual fit = fit_length_residual(s, len);
    EXPECT_NEAR(fit.slope, -0.5, 1e-14);
    EXPECT_NEAR(fit.intercept, 2.0, 1e-14);
    for (double r : residual_scores(s, len, fit)) EXPECT_NEAR(r, 0.0, 1e-14);

    // Applied to another set, the dev fit is used as is (no refit): residual = score - line.
    const std::vector<double> test_len{2, 7};
    const Scores test_s{5.0, -1.0};
    const Scores r = residual_scores(test_s, test_len, fit);
    EXPECT_NEAR(r[0], 5.0 - (-0.5 * std::log(2.0) + 2.0), 1e-14);
    EXPECT_NEAR(r[1], -1.0 - (-0.5 * std::log(7.0) + 2.0), 1e-14);
    EXPECT_EQ(residual_scores({INFINITY}, {3}, fit)[0], INFINITY);
}

TEST(LengthResidualFit, LeastSquaresAndEqualLengths) {
    // Two lengths: the line passes through the mean score of each.
    const LengthResidual fit = fit_length_residual({1, 3, 10, 14}, {1, 1, std::exp(2.0), std::exp(2.0)});
    EXPECT_NEAR(fit.intercept, 2.0, 1e-12);
    EXPECT_NEAR(fit.slope, 5.0, 1e-12);
    const LengthResidual flat = fit_length_residual({1, 2, 6}, {7, 7, 7});
    EXPECT_EQ(flat.slope, 0.0);
    EXPECT_EQ(flat.intercept, 3.0);
}

TEST(LengthResidualFit, BadInputThrows) {
    EXPECT_THROW(fit_length_residual({}, {}), Error);
    EXPECT_THROW(fit_length_residual({1, 2}, {1}), Error);
    EXPECT_THROW(fit_length_residual({1, INFINITY}, {1, 2}), Error);
    EXPECT_THROW(fit_length_residual({1, 2}, {1, INFINITY}), Error);
    EXPECT_THROW(fit_length_residual({1, 2}, {1, NAN}), Error);
    EXPECT_THROW(residual_scores({1, NAN}, {1, 2}, {}), Error);
    EXPECT_THROW(residual_scores({1}, {1}, {NAN, 0.0}), Error);
    try {
        residual_scores({1, 2}, {1, 0.5}, {});
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "residual_scores: length 1 is 0.500000 (expected a finite number >= 1)");
    }
}

}  // namespace
}  // namespace kvlens
