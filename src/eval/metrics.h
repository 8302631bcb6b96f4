// Evaluation metrics for confidence scores (method.md section 2 step 5).
//
// Convention: labels are 1 = correct (the positive class) and 0 = incorrect; a higher score means "more
// likely correct". Every ranking metric is defined over the distinct score values (tied scores form one
// threshold), exactly as scikit-learn does, and tests/python/test_metrics_reference.py checks that to 1e-12.
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

// All of the above for one score column.
struct BinaryMetrics {
    int n = 0;
    int n_correct = 0;
    double accuracy = 0.0;
    double auroc = 0.0;
    double aupr = 0.0;
    double fpr95 = 0.0;
};

BinaryMetrics binary_metrics(const std::vector<double>& scores, const std::vector<int>& labels);

}  // namespace kvlens
