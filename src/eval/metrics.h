// Evaluation metrics for confidence scores (method.md section 2 step 6).
//
// Convention: labels are 1 = correct (the positive class) and 0 = incorrect; a higher score means "more
// likely correct". Every ranking metric is defined over the distinct score values (tied scores form one
// threshold), exactly as scikit-learn does, and tests/python/test_metrics_reference.py checks that to 1e-12
// (against scikit-learn where it has the metric, against an independent numpy version otherwise).
//
// Errors and degenerate inputs:
//   - scores.size() != labels.size(), a label other than 0/1, or a NaN score -> kvlens::Error. (+-inf is a
//     valid score.)
//   - A ranking metric whose input lacks a class (empty, all correct, all incorrect) -> NaN, not an error, so
//     a report over many runs still prints the other numbers (a model that fails every question is a
//     result, not a bug). accuracy() of an empty input is NaN too.
#pragma once

#include <cstdint>
#include <vector>

namespace kvlens {

// ROC curve as sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False): the first point is
// (0, 0) at threshold +inf, then one point per distinct score from high to low. Empty vectors when the input
// lacks a class.
struct RocCurve {
    std::vector<double> fpr, tpr, thresholds;
};

RocCurve roc_curve(const std::vector<double>& scores, const std::vector<int>& labels);

// Area under the ROC curve (trapezoid over the distinct thresholds == Mann-Whitney U with mid-ranks).
double auroc(const std::vector<double>& scores, const std::vector<int>& labels);

// sklearn.metrics.average_precision_score: sum over distinct thresholds of (R_i - R_{i-1}) * P_i.
double aupr(const std::vector<double>& scores, const std::vector<int>& labels);

// FPR at 95% TPR: the smallest FPR among the ROC points (drop_intermediate=False) with TPR >= 0.95.
double fpr_at_95_tpr(const std::vector<double>& scores, const std::vector<int>& labels);

// Fraction of labels that are 1.
double accuracy(const std::vector<int>& labels);

// Bootstrap percentile interval for AUROC. Each resample draws n indices with replacement; a resample that
// lacks a class has no AUROC and is skipped (counted in `skipped`). lo/hi are the (1-level)/2 and (1+level)/2
// quantiles of the kept AUROCs, linearly interpolated as numpy.percentile does. NaN when nothing was kept.
struct AurocInterval {
    double lo = 0.0, hi = 0.0;
    int resamples = 0;  // asked for
    int skipped = 0;    // lacked a class
};

AurocInterval bootstrap_auroc(const std::vector<double>& scores, const std::vector<int>& labels,
                              int resamples = 1000, uint64_t seed = 0, double level = 0.95);

// Paired bootstrap interval of AUROC(a) - AUROC(b) on the same samples (every resample draws the same
// indices for both scores, and the same indices as bootstrap_auroc with that seed): does one score separate
// better than another? NaN when no resample has both classes.
AurocInterval bootstrap_auroc_difference(const std::vector<double>& a, const std::vector<double>& b,
                                         const std::vector<int>& labels, int resamples = 1000,
                                         uint64_t seed = 0, double level = 0.95);

// Paired bootstrap interval of mean(a) - mean(b) for two outcomes per item (e.g. 0/1: did strategy A / B
// answer question i correctly), resampling items with the same indices for both (and the same indices as
// bootstrap_auroc with that seed). The estimate itself is mean(a) - mean(b); nothing is skipped.
AurocInterval bootstrap_mean_difference(const std::vector<int>& a, const std::vector<int>& b,
                                        int resamples = 1000, uint64_t seed = 0, double level = 0.95);

// Prediction-rejection ratio, as LM-Polygraph's PredictionRejectionArea (with its uncertainty = -score):
// order the samples by descending score; acc_k = accuracy of the k highest-scored (k = 1..n, i.e. reject the
// n-k lowest); area = mean over k of acc_k. PRR = (area - random) / (oracle - random), where random =
// accuracy (a random order's expected area) and oracle = the area of the order that puts every correct
// answer first. 1 = perfect ranking, 0 = no better than chance, negative = worse; reversed scores give
// exactly -1 when the classes are balanced.
// Ties: within a group of tied scores the correct answers are spread evenly (the cumulative count grows
// linearly across the group), which is the mean over every order of the tied samples, so the result does
// not depend on the input order.
double prr(const std::vector<double>& scores, const std::vector<int>& labels);

// Answer length as a confound (method.md section 2 step 5: wrong answers tend to be longer).
//
// AUROC within length bins: the probability that a correct answer outscores an incorrect one (ties count
// half) over the pairs that fall in the same length bin only (Mann-Whitney restricted to within-bin pairs
// == the per-bin AUROCs averaged with weights P_b * N_b). Bins are quantiles of length with ties kept
// together: sample i goes to bin floor(m_i * n_bins / n), m_i = the number of samples strictly shorter
// than it, so tied lengths share a bin, the bin depends only on the lengths, and fewer than n_bins bins may
// be non-empty. NaN when no bin has both classes. n_bins >= 1 (1 == auroc); lengths must not be NaN.
double auroc_within_bins(const std::vector<double>& scores, const std::vector<int>& labels,
                         const std::vector<double>& lengths, int n_bins);

// Least squares score ~ slope * log(length) + intercept. Fit on the development part, then take the
// residuals of the test part with residual_scores, so that the test scores do not shape the fit.
// Lengths must be finite and >= 1, scores finite; at least one sample. When every length is equal the
// slope is 0 (length explains nothing) and the intercept is the mean score.
struct LengthResidual {
    double slope = 0.0, intercept = 0.0;
};

LengthResidual fit_length_residual(const std::vector<double>& scores, const std::vector<double>& lengths);

// score_i - (slope * log(length_i) + intercept). Lengths as above; +-inf scores stay +-inf, NaN is an error.
std::vector<double> residual_scores(const std::vector<double>& scores, const std::vector<double>& lengths,
                                    const LengthResidual& fit);

// All of the ranking metrics above for one score column (the length ones need lengths: call them apart).
struct BinaryMetrics {
    int n = 0;
    int n_correct = 0;
    double accuracy = 0.0;
    double auroc = 0.0;
    double aupr = 0.0;
    double fpr95 = 0.0;
    double prr = 0.0;
};

BinaryMetrics binary_metrics(const std::vector<double>& scores, const std::vector<int>& labels);

}  // namespace kvlens
