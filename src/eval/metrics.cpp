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

// Mann-Whitney U doubled (a pair ranked right counts 2, a tied pair 1): the ROC trapezoid in integer units,
// so that the only rounding of AUROC is the final division.
int64_t twice_u(const std::vector<Group>& groups) {
    int64_t tp = 0, twice = 0;
    for (const Group& g : groups) {
        twice += g.neg * (2 * tp + g.pos);
        tp += g.pos;
    }
    return twice;
}

double auroc_of(const std::vector<Group>& groups) {
    int64_t P, N;
    totals(groups, P, N);
    if (P == 0 || N == 0) return kNaN;
    return (double)twice_u(groups) / (2.0 * (double)P * (double)N);
}

// Mean over k = 1..n of the accuracy of the k highest-scored samples, a tied group's correct answers spread
// evenly over its positions. Each term is one exact integer ratio, so that equal curves (a perfect score
// and the oracle) give bit-equal areas.
double rejection_area(const std::vector<Group>& groups) {
    int64_t k = 0, correct = 0;
    double sum = 0.0;
    for (const Group& g : groups) {
        const int64_t size = g.pos + g.neg;
        for (int64_t j = 1; j <= size; ++j) {
            sum += (double)(correct * size + j * g.pos) / (double)(size * (k + j));
        }
        k += size;
        correct += g.pos;
    }
    return sum / (double)k;
}

double prr_of(const std::vector<Group>& groups) {
    int64_t P, N;
    totals(groups, P, N);
    if (P == 0 || N == 0) return kNaN;
    const double random = (double)P / (double)(P + N);
    const double oracle = rejection_area({{1.0, P, 0}, {0.0, 0, N}});
    return (rejection_area(groups) - random) / (oracle - random);
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

namespace {

// Bootstrap percentile interval of stat(counts) over resamples (counts = multiplicity per original index);
// NaN statistics (a resample without both classes) are skipped.
template <typename Stat>
AurocInterval bootstrap_interval(size_t n, int resamples, uint64_t seed, double level, Stat stat) {
    if (resamples < 1) throw Error("bootstrap: resamples must be >= 1, got " + std::to_string(resamples));
    if (!(level > 0.0 && level < 1.0))
        throw Error("bootstrap: level must be in (0, 1), got " + std::to_string(level));
    AurocInterval out;
    out.resamples = resamples;
    if (n == 0) {
        out.lo = out.hi = kNaN;
        out.skipped = resamples;
        return out;
    }
    std::mt19937_64 rng(seed);
    std::vector<int> counts(n);
    std::vector<double> kept;
    kept.reserve(resamples);
    for (int r = 0; r < resamples; ++r) {
        std::fill(counts.begin(), counts.end(), 0);
        // rng() % n rather than uniform_int_distribution: the latter differs between standard libraries, and
        // the interval should not. The modulo bias is below n / 2^64.
        for (size_t k = 0; k < n; ++k) ++counts[rng() % n];
        const double a = stat(counts);
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

}  // namespace

AurocInterval bootstrap_auroc(const std::vector<double>& scores, const std::vector<int>& labels,
                              int resamples, uint64_t seed, double level) {
    validate(scores, labels);
    // Sort once; a resample is a multiplicity per original index, so each AUROC is O(n).
    const std::vector<size_t> order = order_desc(scores);
    return bootstrap_interval(scores.size(), resamples, seed, level, [&](const std::vector<int>& counts) {
        return auroc_of(group_by_score(scores, labels, order, &counts));
    });
}

AurocInterval bootstrap_auroc_difference(const std::vector<double>& a, const std::vector<double>& b,
                                         const std::vector<int>& labels, int resamples, uint64_t seed,
                                         double level) {
    validate(a, labels);
    validate(b, labels);
    const std::vector<size_t> order_a = order_desc(a), order_b = order_desc(b);
    return bootstrap_interval(a.size(), resamples, seed, level, [&](const std::vector<int>& counts) {
        return auroc_of(group_by_score(a, labels, order_a, &counts)) -
               auroc_of(group_by_score(b, labels, order_b, &counts));
    });
}

AurocInterval bootstrap_mean_difference(const std::vector<int>& a, const std::vector<int>& b, int resamples,
                                        uint64_t seed, double level) {
    if (a.size() != b.size()) {
        throw Error("bootstrap_mean_difference: " + std::to_string(a.size()) + " outcomes against " +
                    std::to_string(b.size()));
    }
    return bootstrap_interval(a.size(), resamples, seed, level, [&](const std::vector<int>& counts) {
        int64_t diff = 0, n = 0;
        for (size_t i = 0; i < a.size(); ++i) {
            diff += (int64_t)counts[i] * (a[i] - b[i]);
            n += counts[i];
        }
        return (double)diff / (double)n;
    });
}

double prr(const std::vector<double>& scores, const std::vector<int>& labels) {
    validate(scores, labels);
    return prr_of(group_by_score(scores, labels, order_desc(scores)));
}

double auroc_within_bins(const std::vector<double>& scores, const std::vector<int>& labels,
                         const std::vector<double>& lengths, int n_bins) {
    validate(scores, labels);
    if (lengths.size() != scores.size()) {
        throw Error("auroc_within_bins: " + std::to_string(scores.size()) + " scores but " +
                    std::to_string(lengths.size()) + " lengths");
    }
    if (n_bins < 1) throw Error("auroc_within_bins: n_bins must be >= 1, got " + std::to_string(n_bins));
    for (size_t i = 0; i < lengths.size(); ++i) {
        if (std::isnan(lengths[i])) throw Error("auroc_within_bins: length " + std::to_string(i) + " is NaN");
    }
    const size_t n = scores.size();
    std::vector<size_t> by_length(n);
    std::iota(by_length.begin(), by_length.end(), size_t{0});
    std::sort(by_length.begin(), by_length.end(),
              [&](size_t a, size_t b) { return lengths[a] < lengths[b]; });

    // Bins are contiguous runs of by_length, so each is scored when the next begins (no n_bins-sized
    // table: n_bins may be huge).
    int64_t twice = 0, pairs = 0;
    std::vector<size_t> members;
    auto flush = [&]() {
        std::sort(members.begin(), members.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
        const std::vector<Group> groups = group_by_score(scores, labels, members);
        int64_t P, N;
        totals(groups, P, N);
        twice += twice_u(groups);
        pairs += P * N;
        members.clear();
    };
    size_t shorter = 0, bin = 0;  // shorter: samples strictly shorter than the current one
    for (size_t r = 0; r < n; ++r) {
        if (r > 0 && lengths[by_length[r]] != lengths[by_length[r - 1]]) shorter = r;
        const size_t b = (size_t)((uint64_t)shorter * (uint64_t)n_bins / (uint64_t)n);
        if (b != bin) flush();
        bin = b;
        members.push_back(by_length[r]);
    }
    flush();
    if (pairs == 0) return kNaN;
    return (double)twice / (2.0 * (double)pairs);
}

namespace {

void validate_lengths(const char* what, const std::vector<double>& scores,
                      const std::vector<double>& lengths) {
    if (lengths.size() != scores.size()) {
        throw Error(std::string(what) + ": " + std::to_string(scores.size()) + " scores but " +
                    std::to_string(lengths.size()) + " lengths");
    }
    for (size_t i = 0; i < lengths.size(); ++i) {
        if (!(lengths[i] >= 1.0) || std::isinf(lengths[i])) {
            throw Error(std::string(what) + ": length " + std::to_string(i) + " is " +
                        std::to_string(lengths[i]) + " (expected a finite number >= 1)");
        }
    }
}

}  // namespace

LengthResidual fit_length_residual(const std::vector<double>& scores, const std::vector<double>& lengths) {
    validate_lengths("fit_length_residual", scores, lengths);
    const size_t n = scores.size();
    if (n == 0) throw Error("fit_length_residual: no samples to fit");
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(scores[i])) {
            throw Error("fit_length_residual: score " + std::to_string(i) + " is " +
                        std::to_string(scores[i]) + " (expected a finite number)");
        }
    }
    double mean_x = 0.0, mean_y = 0.0;
    for (size_t i = 0; i < n; ++i) {
        mean_x += std::log(lengths[i]);
        mean_y += scores[i];
    }
    mean_x /= (double)n;
    mean_y /= (double)n;
    LengthResidual fit;
    // Tested on the lengths themselves: the centred sums of equal logs need not be exactly 0.
    if (std::all_of(lengths.begin(), lengths.end(), [&](double l) { return l == lengths[0]; })) {
        fit.intercept = mean_y;
        return fit;
    }
    double sxx = 0.0, sxy = 0.0;  // centred (two-pass) for accuracy
    for (size_t i = 0; i < n; ++i) {
        const double dx = std::log(lengths[i]) - mean_x;
        sxx += dx * dx;
        sxy += dx * (scores[i] - mean_y);
    }
    fit.slope = sxy / sxx;
    fit.intercept = mean_y - fit.slope * mean_x;
    return fit;
}

std::vector<double> residual_scores(const std::vector<double>& scores, const std::vector<double>& lengths,
                                    const LengthResidual& fit) {
    validate_lengths("residual_scores", scores, lengths);
    if (!std::isfinite(fit.slope) || !std::isfinite(fit.intercept)) {
        throw Error("residual_scores: the fit is not finite (slope " + std::to_string(fit.slope) +
                    ", intercept " + std::to_string(fit.intercept) + ")");
    }
    std::vector<double> out(scores.size());
    for (size_t i = 0; i < scores.size(); ++i) {
        if (std::isnan(scores[i])) throw Error("residual_scores: score " + std::to_string(i) + " is NaN");
        out[i] = scores[i] - (fit.slope * std::log(lengths[i]) + fit.intercept);
    }
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
    m.prr = prr_of(groups);
    return m;
}

}  // namespace kvlens
