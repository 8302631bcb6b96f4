#include "eval/probe.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <numeric>
#include <random>
#include <set>
#include <string>

#include "util/error.h"

namespace kvlens {

namespace {

// Mean cross-entropy + 0.5/(C n) ||W||^2 and its gradient, at parameters w (k x d weights, then k biases).
// Dividing sklearn's objective by C n keeps the optimum and makes `tol` independent of C and n.
double objective(const std::vector<double>& z, int n, int d, const std::vector<int>& y, int n_classes, int k,
                 double C, const std::vector<double>& w, std::vector<double>& grad) {
    std::fill(grad.begin(), grad.end(), 0.0);
    std::vector<double> logit(n_classes), r(k);
    double loss = 0.0;
    const double* b = w.data() + (size_t)k * d;
    for (int i = 0; i < n; ++i) {
        const double* x = z.data() + (size_t)i * d;
        if (k == 1) logit[0] = 0.0;
        for (int j = 0; j < k; ++j) {
            const double* wj = w.data() + (size_t)j * d;
            double s = b[j];
            for (int t = 0; t < d; ++t) s += wj[t] * x[t];
            logit[n_classes - k + j] = s;
        }
        const double m = *std::max_element(logit.begin(), logit.end());
        double se = 0.0;
        for (int c = 0; c < n_classes; ++c) se += std::exp(logit[c] - m);
        const double lse = m + std::log(se);
        loss += lse - logit[y[i]];
        for (int j = 0; j < k; ++j) {
            const int c = n_classes - k + j;
            r[j] = std::exp(logit[c] - lse) - (y[i] == c ? 1.0 : 0.0);
            double* gj = grad.data() + (size_t)j * d;
            for (int t = 0; t < d; ++t) gj[t] += r[j] * x[t];
            grad[(size_t)k * d + j] += r[j];
        }
    }
    const double reg = 1.0 / (C * n);
    double wn = 0.0;
    for (size_t t = 0; t < (size_t)k * d; ++t) {
        wn += w[t] * w[t];
        grad[t] = grad[t] / n + reg * w[t];
    }
    for (int j = 0; j < k; ++j) grad[(size_t)k * d + j] /= n;
    return loss / n + 0.5 * reg * wn;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0.0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

double max_abs(const std::vector<double>& a) {
    double m = 0.0;
    for (double v : a) m = std::max(m, std::fabs(v));
    return m;
}

}  // namespace

void LogisticProbe::fit(const Matrix& x, const std::vector<int>& y, int n_classes,
                        const ProbeParams& params) {
    const int n = x.rows, d = x.cols;
    if (n < 1 || d < 1 || (size_t)n * d != x.data.size())
        throw Error("probe: bad feature matrix (" + std::to_string(n) + " x " + std::to_string(d) + ")");
    if ((int)y.size() != n)
        throw Error("probe: " + std::to_string(y.size()) + " labels for " + std::to_string(n) + " rows");
    if (n_classes < 2) throw Error("probe: need at least 2 classes, got " + std::to_string(n_classes));
    for (int v : y)
        if (v < 0 || v >= n_classes) throw Error("probe: label " + std::to_string(v) + " out of range");
    if (!(params.C > 0.0)) throw Error("probe: C must be > 0");
    n_classes_ = n_classes;
    dim_ = d;
    k_ = n_classes == 2 ? 1 : n_classes;

    mean_.assign(d, 0.0);
    inv_std_.assign(d, 1.0);
    if (params.standardize) {
        std::vector<double> var(d, 0.0);
        for (int i = 0; i < n; ++i)
            for (int t = 0; t < d; ++t) mean_[t] += x.row(i)[t];
        for (int t = 0; t < d; ++t) mean_[t] /= n;
        for (int i = 0; i < n; ++i)
            for (int t = 0; t < d; ++t) var[t] += (x.row(i)[t] - mean_[t]) * (x.row(i)[t] - mean_[t]);
        // A constant feature stays 0 after centring (sklearn's StandardScaler keeps scale 1 for it too).
        for (int t = 0; t < d; ++t) inv_std_[t] = var[t] > 0.0 ? 1.0 / std::sqrt(var[t] / n) : 1.0;
    }
    std::vector<double> z((size_t)n * d);
    for (int i = 0; i < n; ++i)
        for (int t = 0; t < d; ++t) z[(size_t)i * d + t] = (x.row(i)[t] - mean_[t]) * inv_std_[t];

    // L-BFGS (memory 10) with a backtracking Armijo line search, from W = 0.
    const size_t np = (size_t)k_ * d + k_;
    std::vector<double> w(np, 0.0), g(np), w_new(np), g_new(np), dir(np);
    double f = objective(z, n, d, y, n_classes, k_, params.C, w, g);
    std::deque<std::vector<double>> S, Y;
    std::deque<double> rho;
    converged_ = false;
    iterations_ = 0;
    for (; iterations_ < params.max_iter; ++iterations_) {
        if (max_abs(g) < params.tol) {
            converged_ = true;
            break;
        }
        // Two-loop recursion: dir = -H g.
        dir = g;
        std::vector<double> alpha(S.size());
        for (size_t m = S.size(); m-- > 0;) {
            alpha[m] = rho[m] * dot(S[m], dir);
            for (size_t t = 0; t < np; ++t) dir[t] -= alpha[m] * Y[m][t];
        }
        const double gamma =
            S.empty() ? 1.0 / std::sqrt(dot(g, g)) : dot(S.back(), Y.back()) / dot(Y.back(), Y.back());
        for (double& v : dir) v *= gamma;
        for (size_t m = 0; m < S.size(); ++m) {
            const double beta = rho[m] * dot(Y[m], dir);
            for (size_t t = 0; t < np; ++t) dir[t] += (alpha[m] - beta) * S[m][t];
        }
        for (double& v : dir) v = -v;
        double gd = dot(g, dir);
        if (!(gd < 0.0)) {  // not a descent direction: restart from steepest descent
            S.clear();
            Y.clear();
            rho.clear();
            const double sc = 1.0 / std::sqrt(dot(g, g));
            for (size_t t = 0; t < np; ++t) dir[t] = -g[t] * sc;
            gd = dot(g, dir);
        }
        double step = 1.0, f_new = f;
        bool ok = false;
        for (int h = 0; h < 60; ++h, step *= 0.5) {
            for (size_t t = 0; t < np; ++t) w_new[t] = w[t] + step * dir[t];
            f_new = objective(z, n, d, y, n_classes, k_, params.C, w_new, g_new);
            if (f_new <= f + 1e-4 * step * gd) {
                ok = true;
                break;
            }
        }
        if (!ok) break;  // no decrease possible at float64 precision: as converged as it gets
        std::vector<double> s(np), yv(np);
        for (size_t t = 0; t < np; ++t) {
            s[t] = w_new[t] - w[t];
            yv[t] = g_new[t] - g[t];
        }
        const double sy = dot(s, yv);
        if (sy > 1e-16) {
            S.push_back(std::move(s));
            Y.push_back(std::move(yv));
            rho.push_back(1.0 / sy);
            if (S.size() > 10) {
                S.pop_front();
                Y.pop_front();
                rho.pop_front();
            }
        }
        w.swap(w_new);
        g.swap(g_new);
        // scipy's L-BFGS-B stopping rule (sklearn's solver): the relative decrease fell to 64 eps.
        const double rel = (f - f_new) / std::max({std::fabs(f), std::fabs(f_new), 1.0});
        f = f_new;
        if (rel <= 64 * 2.220446049250313e-16) {
            ++iterations_;
            converged_ = true;
            break;
        }
    }
    if (!converged_ && max_abs(g) < params.tol) converged_ = true;
    w_ = std::move(w);
}

std::vector<double> LogisticProbe::predict_proba(const Matrix& x) const {
    if (n_classes_ == 0) throw Error("probe: predict before fit");
    if (x.cols != dim_)
        throw Error("probe: " + std::to_string(x.cols) + " features, fitted on " + std::to_string(dim_));
    std::vector<double> out((size_t)x.rows * n_classes_), zi(dim_);
    const double* b = w_.data() + (size_t)k_ * dim_;
    for (int i = 0; i < x.rows; ++i) {
        for (int t = 0; t < dim_; ++t) zi[t] = (x.row(i)[t] - mean_[t]) * inv_std_[t];
        double* p = out.data() + (size_t)i * n_classes_;
        if (k_ == 1) p[0] = 0.0;
        for (int j = 0; j < k_; ++j) {
            double s = b[j];
            for (int t = 0; t < dim_; ++t) s += w_[(size_t)j * dim_ + t] * zi[t];
            p[n_classes_ - k_ + j] = s;
        }
        const double m = *std::max_element(p, p + n_classes_);
        double se = 0.0;
        for (int c = 0; c < n_classes_; ++c) se += (p[c] = std::exp(p[c] - m));
        for (int c = 0; c < n_classes_; ++c) p[c] /= se;
    }
    return out;
}

std::vector<int> LogisticProbe::predict(const Matrix& x) const {
    const std::vector<double> p = predict_proba(x);
    std::vector<int> out(x.rows);
    for (int i = 0; i < x.rows; ++i) {
        const double* r = p.data() + (size_t)i * n_classes_;
        out[i] = (int)(std::max_element(r, r + n_classes_) - r);  // ties: the lowest class, as numpy argmax
    }
    return out;
}

std::vector<int> stratified_folds(const std::vector<int>& y, int k, uint64_t seed) {
    if (k < 2 || k > (int)y.size())
        throw Error("cross-validation: " + std::to_string(k) + " folds for " + std::to_string(y.size()) +
                    " samples");
    std::vector<int> fold(y.size(), -1);
    std::mt19937_64 rng(seed);
    const int n_classes = y.empty() ? 0 : *std::max_element(y.begin(), y.end()) + 1;
    int next = 0;  // continue the deal across classes so that fold sizes stay balanced too
    for (int c = 0; c < n_classes; ++c) {
        std::vector<size_t> idx;
        for (size_t i = 0; i < y.size(); ++i)
            if (y[i] == c) idx.push_back(i);
        // Fisher-Yates with explicit modulo draws: std::shuffle's output differs between standard libraries.
        for (size_t i = idx.size(); i > 1; --i) std::swap(idx[i - 1], idx[rng() % i]);
        for (size_t i : idx) fold[i] = next++ % k;
    }
    return fold;
}

double macro_f1(const std::vector<int>& y_true, const std::vector<int>& y_pred) {
    if (y_true.size() != y_pred.size())
        throw Error("macro_f1: " + std::to_string(y_true.size()) + " labels, " +
                    std::to_string(y_pred.size()) + " predictions");
    std::set<int> labels(y_true.begin(), y_true.end());
    labels.insert(y_pred.begin(), y_pred.end());
    if (labels.empty()) return NAN;
    double sum = 0.0;
    for (int c : labels) {
        int tp = 0, fp = 0, fn = 0;
        for (size_t i = 0; i < y_true.size(); ++i) {
            tp += y_true[i] == c && y_pred[i] == c;
            fp += y_true[i] != c && y_pred[i] == c;
            fn += y_true[i] == c && y_pred[i] != c;
        }
        sum += tp == 0 ? 0.0 : 2.0 * tp / (2.0 * tp + fp + fn);
    }
    return sum / labels.size();
}

namespace {
void mean_std(const std::vector<double>& v, double& mean, double& sd) {
    mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
    double s = 0.0;
    for (double x : v) s += (x - mean) * (x - mean);
    sd = std::sqrt(s / v.size());
}
}  // namespace

CvResult cross_validate(const Matrix& x, const std::vector<int>& y, int n_classes, int k, uint64_t seed,
                        const ProbeParams& params) {
    const std::vector<int> fold = stratified_folds(y, k, seed);
    CvResult r;
    for (int f = 0; f < k; ++f) {
        Matrix tr, te;
        tr.cols = te.cols = x.cols;
        std::vector<int> ytr, yte;
        for (int i = 0; i < x.rows; ++i) {
            Matrix& m = fold[i] == f ? te : tr;
            m.data.insert(m.data.end(), x.row(i), x.row(i) + x.cols);
            ++m.rows;
            (fold[i] == f ? yte : ytr).push_back(y[i]);
        }
        LogisticProbe probe;
        probe.fit(tr, ytr, n_classes, params);
        const std::vector<int> pred = probe.predict(te);
        int correct = 0;
        for (size_t i = 0; i < pred.size(); ++i) correct += pred[i] == yte[i];
        r.accuracy.push_back((double)correct / pred.size());
        r.macro_f1.push_back(macro_f1(yte, pred));
        r.max_iterations = std::max(r.max_iterations, probe.iterations());
        r.all_converged = r.all_converged && probe.converged();
    }
    mean_std(r.accuracy, r.acc_mean, r.acc_std);
    mean_std(r.macro_f1, r.f1_mean, r.f1_std);
    return r;
}

}  // namespace kvlens
