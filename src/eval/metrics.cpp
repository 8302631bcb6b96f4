#include "eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>

#include "util/error.h"

namespace kvlens {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void validate(const std::vector<double>& scores, const std::vector<int>& labels) {
    if (scores.size() != labels.size()) {
        throw Error("metrics: " + std::to_string(scores.size()) + " scores but " +
                    std::to_string(labels.size()) + " labels");
    }
    for (size_t i = 0; i < scores.size(); ++i) {
        if (std::isnan(scores[i])) throw Error("metrics: score " + std::to_string(i) + " is NaN");
        if (labels[i] != 0 && labels[i] != 1) {
            throw Error("metrics: label " + std::to_string(i) + " is " + std::to_string(labels[i]) +
                        " (expected 0 or 1)");
        }
    }
}

// Indices by descending score.
std::vector<size_t> order_desc(const std::vector<double>& scores) {
    std::vector<size_t> order(scores.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
    return order;
}

// One distinct score value, from high to low, with its (weighted) positive and negative counts. Every metric
// is a function of this table, which is what makes ties behave as in sklearn.
struct Group {
    double score;
    int64_t pos, neg;
};

// weights: per original index (bootstrap multiplicities); null = 1 each.
std::vector<Group> group_by_score(const std::vector<double>& scores, const std::vector<int>& labels,
                                  const std::vector<size_t>& order,
                                  const std::vector<int>* weights = nullptr) {
    std::vector<Group> groups;
    for (size_t k = 0; k < order.size(); ++k) {
        const size_t i = order[k];
        const int64_t w = weights ? (*weights)[i] : 1;
        if (groups.empty() || scores[i] != groups.back().score) groups.push_back({scores[i], 0, 0});
        (labels[i] ? groups.back().pos : groups.back().neg) += w;
    }
    return groups;
}

void totals(const std::vector<Group>& groups, int64_t& P, int64_t& N) {
    P = N = 0;
    for (const Group& g : groups) {
        P += g.pos;
        N += g.neg;
    }
}

// Trapezoid in integer units (twice the area, in units of 1/(P*N)), so the only rounding is the final
// division.
double auroc_of(const std::vector<Group>& groups) {
    int64_t P, N;
    totals(groups, P, N);
    if (P == 0 || N == 0) return kNaN;
    int64_t tp = 0, twice_area = 0;
    for (const Group& g : groups) {
        twice_area += g.neg * (2 * tp + g.pos);
        tp += g.pos;
    }
    return (double)twice_area / (2.0 * (double)P * (double)N);
}

double aupr_of(const std::vector<Group>& groups) {
    int64_t P, N;
    totals(groups, P, N);
    if (P == 0 || N == 0) return kNaN;
    int64_t tp = 0, fp = 0;
    double sum = 0.0;
    for (const Group& g : groups) {
        tp += g.pos;
        fp += g.neg;
        if (g.pos > 0) sum += (double)g.pos * ((double)tp / (double)(tp + fp));
    }
    return sum / (double)P;
}

RocCurve roc_of(const std::vector<Group>& groups) {
    int64_t P, N;
    totals(groups, P, N);
    RocCurve roc;
    if (P == 0 || N == 0) return roc;
    roc.fpr.push_back(0.0);
    roc.tpr.push_back(0.0);
    roc.thresholds.push_back(std::numeric_limits<double>::infinity());
    int64_t tp = 0, fp = 0;
    for (const Group& g : groups) {
        tp += g.pos;
        fp += g.neg;
        // Same divisions as sklearn (count / total), so the points match bit for bit.
        roc.fpr.push_back((double)fp / (double)N);
        roc.tpr.push_back((double)tp / (double)P);
        roc.thresholds.push_back(g.score);
    }
    return roc;
}

double fpr95_of(const std::vector<Group>& groups) {
    const RocCurve roc = roc_of(groups);
    // FPR is non-decreasing along the curve, so the first point reaching the TPR has the smallest FPR.
    for (size_t i = 0; i < roc.tpr.size(); ++i) {
        if (roc.tpr[i] >= 0.95) return roc.fpr[i];
    }
    return kNaN;  // lacks a class (the last point always has TPR 1 otherwise)
}

}  // namespace

RocCurve roc_curve(const std::vector<double>& scores, const std::vector<int>& labels) {
    validate(scores, labels);
    return roc_of(group_by_score(scores, labels, order_desc(scores)));
}

double auroc(const std::vector<double>& scores, const std::vector<int>& labels) {
    validate(scores, labels);
    return auroc_of(group_by_score(scores, labels, order_desc(scores)));
}

double aupr(const std::vector<double>& scores, const std::vector<int>& labels) {
    validate(scores, labels);
    return aupr_of(group_by_score(scores, labels, order_desc(scores)));
}

double fpr_at_95_tpr(const std::vector<double>& scores, const std::vector<int>& labels) {
    validate(scores, labels);
    return fpr95_of(group_by_score(scores, labels, order_desc(scores)));
}

double accuracy(const std::vector<int>& labels) {
    if (labels.empty()) return kNaN;
    int64_t correct = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
        if (labels[i] != 0 && labels[i] != 1) {
            throw Error("metrics: label " + std::to_string(i) + " is " + std::to_string(labels[i]) +
                        " (expected 0 or 1)");
        }
        correct += labels[i];
    }
    return (double)correct / (double)labels.size();
}

AurocInterval bootstrap_auroc(const std::vector<double>& scores, const std::vector<int>& labels,
                              int resamples, uint64_t seed, double level) {
    validate(scores, labels);
    if (resamples < 1) throw Error("bootstrap: resamples must be >= 1, got " + std::to_string(resamples));
    if (!(level > 0.0 && level < 1.0))
        throw Error("bootstrap: level must be in (0, 1), got " + std::to_string(level));

    AurocInterval out;
    out.resamples = resamples;
    const size_t n = scores.size();
    if (n == 0) {
        out.lo = out.hi = kNaN;
        out.skipped = resamples;
        return out;
    }
    // Sort once; a resample is a multiplicity per original index, so each AUROC is O(n).
    const std::vector<size_t> order = order_desc(scores);
    std::mt19937_64 rng(seed);
    std::vector<int> counts(n);
    std::vector<double> kept;
    kept.reserve(resamples);
    for (int r = 0; r < resamples; ++r) {
        std::fill(counts.begin(), counts.end(), 0);
        // rng() % n rather than uniform_int_distribution: the latter differs between standard libraries, and
        // the interval should not. The modulo bias is below n / 2^64.
        for (size_t k = 0; k < n; ++k) ++counts[rng() % n];
        const double a = auroc_of(group_by_score(scores, labels, order, &counts));
        if (std::isnan(a)) {
            ++out.skipped;
        } else {
            kept.push_back(a);
        }
    }
    if (kept.empty()) {
        out.lo = out.hi = kNaN;
        return out;
    }
    std::sort(kept.begin(), kept.end());
    auto quantile = [&](double q) {  // numpy.percentile, method "linear"
        const double pos = q * (double)(kept.size() - 1);
        const size_t i = (size_t)std::floor(pos);
        const double frac = pos - (double)i;
        return i + 1 < kept.size() ? kept[i] + frac * (kept[i + 1] - kept[i]) : kept[i];
    };
    out.lo = quantile((1.0 - level) / 2.0);
    out.hi = quantile((1.0 + level) / 2.0);
    return out;
}

BinaryMetrics binary_metrics(const std::vector<double>& scores, const std::vector<int>& labels) {
    validate(scores, labels);
    const std::vector<Group> groups = group_by_score(scores, labels, order_desc(scores));
    BinaryMetrics m;
    m.n = (int)labels.size();
    for (int l : labels) m.n_correct += l;
    m.accuracy = accuracy(labels);
    m.auroc = auroc_of(groups);
    m.aupr = aupr_of(groups);
    m.fpr95 = fpr95_of(groups);
    return m;
}

}  // namespace kvlens
