// A linear probe on frozen embeddings, as MTEB's classification tasks use: multinomial logistic regression
// with an L2 penalty, fitted by L-BFGS (deterministic: no randomness, fixed iteration order), and stratified
// k-fold cross-validation.
//
// The objective is scikit-learn's LogisticRegression(penalty="l2", C) with the lbfgs solver:
//     0.5 * ||W||^2 + C * sum_i cross_entropy(softmax(W x_i + b), y_i),   b not penalised.
// With two classes it is sklearn's binary model (one weight vector, class 0's logit fixed at 0), which is not
// the same optimum as a 2-class multinomial; tests/python/test_probe_reference.py checks both against
// sklearn.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvlens {

// Row-major n x d features.
struct Matrix {
    int rows = 0, cols = 0;
    std::vector<float> data;
    const float* row(int i) const { return data.data() + (size_t)i * cols; }
};

struct ProbeParams {
    double C = 1.0;           // inverse regularisation strength
    bool standardize = true;  // z-score each feature with the training rows' mean and std before fitting
    int max_iter = 1000;      // L-BFGS iterations at most
    double tol = 1e-8;        // stop when max |gradient| of the mean objective is below this, or when one
                              // step lowers it by a relative 64 eps or less (scipy L-BFGS-B's rule)
};

class LogisticProbe {
public:
    // y: class ids 0..n_classes-1 (n_classes >= 2), one per row of x. Throws Error on bad input.
    void fit(const Matrix& x, const std::vector<int>& y, int n_classes, const ProbeParams& params = {});
    // n x n_classes probabilities, row-major.
    std::vector<double> predict_proba(const Matrix& x) const;
    std::vector<int> predict(const Matrix& x) const;
    int iterations() const { return iterations_; }
    bool converged() const { return converged_; }
    int n_classes() const { return n_classes_; }

private:
    int n_classes_ = 0, dim_ = 0;
    int k_ = 0;              // weight rows: n_classes, or 1 for two classes
    std::vector<double> w_;  // k_ x dim_, then k_ biases
    std::vector<double> mean_, inv_std_;
    int iterations_ = 0;
    bool converged_ = false;
};

// Fold index (0..k-1) of every sample: each class's samples, shuffled with `seed`, are dealt round-robin, so
// per class the folds differ by at most one sample. Throws Error when k < 2 or k > n.
std::vector<int> stratified_folds(const std::vector<int>& y, int k, uint64_t seed);

// Macro-averaged F1 as sklearn.metrics.f1_score(average="macro"): over the classes present in y_true or
// y_pred, a class with no predicted or no true sample scoring 0.
double macro_f1(const std::vector<int>& y_true, const std::vector<int>& y_pred);

struct CvResult {
    std::vector<double> accuracy, macro_f1;                     // per fold
    double acc_mean = 0, acc_std = 0, f1_mean = 0, f1_std = 0;  // std: population (ddof 0) over folds
    int max_iterations = 0;                                     // most L-BFGS iterations of a fold
    bool all_converged = true;
};

// Stratified k-fold cross-validation of the probe.
CvResult cross_validate(const Matrix& x, const std::vector<int>& y, int n_classes, int k, uint64_t seed,
                        const ProbeParams& params = {});

}  // namespace kvlens
