#include "methods/calibration.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "util/error.h"
#include "util/json_num.h"

namespace kvlens {

using nlohmann::json;

CalibrationMethod parse_calibration_method(const std::string& s) {
    if (s == "isotonic") return CalibrationMethod::Isotonic;
    if (s == "platt") return CalibrationMethod::Platt;
    if (s == "logistic") return CalibrationMethod::Logistic;
    throw Error("calibration method '" + s + "': expected isotonic, platt or logistic");
}

const char* to_string(CalibrationMethod m) {
    switch (m) {
        case CalibrationMethod::Isotonic:
            return "isotonic";
        case CalibrationMethod::Platt:
            return "platt";
        case CalibrationMethod::Logistic:
            return "logistic";
    }
    return "?";
}

std::string CalibrationModel::describe() const {
    std::string d;
    auto add = [&](const std::string& part) { d += (d.empty() ? "" : ", ") + part; };
    if (!name.empty()) add("'" + name + "'");
    if (!arch.empty()) add(arch);
    if (n_layer > 0) add(std::to_string(n_layer) + " layers");
    if (size >= 0) add(std::to_string(size) + " bytes");
    return (file.empty() ? std::string("a model") : "'" + file + "'") + (d.empty() ? "" : " (" + d + ")");
}

static void check_training(const std::vector<double>& s, const std::vector<int>& y) {
    if (s.size() != y.size()) throw Error("calibration: scores and labels differ in length");
    if (s.size() < 2) throw Error("calibration: need at least 2 labelled samples");
    int pos = 0;
    for (size_t i = 0; i < s.size(); ++i) {
        if (!std::isfinite(s[i])) throw Error("calibration: score " + std::to_string(i) + " is not finite");
        if (y[i] != 0 && y[i] != 1) throw Error("calibration: label " + std::to_string(i) + " is not 0 or 1");
        pos += y[i];
    }
    if (pos == 0 || pos == (int)s.size())
        throw Error("calibration: every training sample is " + std::string(pos ? "correct" : "incorrect") +
                    "; nothing to calibrate against");
}

// Mann-Whitney AUROC with mid-ranks (kept here: methods do not depend on the evaluation layer).
static double auroc_of(const std::vector<double>& s, const std::vector<int>& y) {
    std::vector<size_t> idx(s.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return s[a] < s[b]; });
    double rank_sum = 0;
    long n_pos = 0;
    for (size_t i = 0; i < idx.size();) {
        size_t j = i;
        while (j < idx.size() && s[idx[j]] == s[idx[i]]) ++j;
        const double mid = (i + 1 + j) / 2.0;  // ranks i+1 .. j
        for (size_t k = i; k < j; ++k)
            if (y[idx[k]]) rank_sum += mid, ++n_pos;
        i = j;
    }
    const double n_neg = (double)s.size() - n_pos;
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg);
}

static void fill_training(Calibration& c, const std::vector<double>& s, const std::vector<int>& y) {
    c.n = (int)s.size();
    c.n_correct = (int)std::count(y.begin(), y.end(), 1);
    c.train_auroc = auroc_of(s, y);
}

Calibration fit_isotonic(const std::vector<double>& scores, const std::vector<int>& labels) {
    check_training(scores, labels);
    Calibration c;
    c.method = CalibrationMethod::Isotonic;
    fill_training(c, scores, labels);
    c.direction = c.train_auroc < 0.5 ? -1 : 1;
    const double d = c.direction;

    // Blocks over z = d * raw, ascending; equal scores pooled before PAV.
    struct Block {
        double sum, w, lo, hi;
    };
    std::vector<size_t> idx(scores.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return d * scores[a] < d * scores[b]; });
    std::vector<Block> blocks;
    for (size_t i : idx) {
        const double z = d * scores[i];
        if (!blocks.empty() && blocks.back().hi == z) {
            blocks.back().sum += labels[i];
            blocks.back().w += 1;
        } else {
            blocks.push_back({(double)labels[i], 1.0, z, z});
        }
        // Pool adjacent violators: the means must not decrease.
        while (blocks.size() > 1) {
            Block& p = blocks[blocks.size() - 2];
            const Block& q = blocks.back();
            if (p.sum / p.w <= q.sum / q.w) break;
            p = {p.sum + q.sum, p.w + q.w, p.lo, q.hi};
            blocks.pop_back();
        }
    }
    for (const Block& b : blocks) {
        c.x.push_back(d * b.lo);
        c.y.push_back(b.sum / b.w);
        if (b.hi != b.lo) {
            c.x.push_back(d * b.hi);
            c.y.push_back(b.sum / b.w);
        }
    }
    if (d < 0) {
        std::reverse(c.x.begin(), c.x.end());
        std::reverse(c.y.begin(), c.y.end());
    }
    return c;
}

Calibration fit_platt(const std::vector<double>& scores, const std::vector<int>& labels) {
    check_training(scores, labels);
    Calibration c;
    c.method = CalibrationMethod::Platt;
    fill_training(c, scores, labels);
    const size_t n = scores.size();
    const double mean = std::accumulate(scores.begin(), scores.end(), 0.0) / n;
    double var = 0;
    for (double s : scores) var += (s - mean) * (s - mean);
    const double sd = var > 0 ? std::sqrt(var / n) : 1.0;
    const double ridge = 1e-4 * n;  // keeps separable data finite; negligible otherwise
    double a = 0, b = 0;            // on z = (s - mean) / sd
    for (int it = 0; it < 100; ++it) {
        double ga = ridge * a, gb = 0, haa = ridge, hab = 0, hbb = 1e-9;
        for (size_t i = 0; i < n; ++i) {
            const double z = (scores[i] - mean) / sd, p = 1 / (1 + std::exp(-(a * z + b))), w = p * (1 - p);
            ga += (p - labels[i]) * z;
            gb += p - labels[i];
            haa += w * z * z;
            hab += w * z;
            hbb += w;
        }
        const double det = haa * hbb - hab * hab;
        const double da = (hbb * ga - hab * gb) / det, db = (haa * gb - hab * ga) / det;
        a -= da;
        b -= db;
        if (std::abs(da) + std::abs(db) < 1e-12) break;
    }
    c.a = a / sd;
    c.b = b - a * mean / sd;
    c.direction = c.a < 0 ? -1 : 1;
    return c;
}

Calibration fit_calibration(CalibrationMethod m, const std::vector<double>& scores,
                            const std::vector<int>& labels) {
    if (m == CalibrationMethod::Logistic)
        throw Error("calibration: logistic combines several named scores (kvlens calibrate --features)");
    return m == CalibrationMethod::Isotonic ? fit_isotonic(scores, labels) : fit_platt(scores, labels);
}

// log(1 + exp(t)) without overflow.
static double softplus(double t) {
    return t > 0 ? t + std::log1p(std::exp(-t)) : std::log1p(std::exp(t));
}

static double sigmoid(double t) {
    return t >= 0 ? 1 / (1 + std::exp(-t)) : std::exp(t) / (1 + std::exp(t));
}

// Solves A x = g for a symmetric positive definite A (k x k, row-major) by Cholesky; A is overwritten.
static std::vector<double> solve_spd(std::vector<double>& A, std::vector<double> g, size_t k) {
    for (size_t j = 0; j < k; ++j) {
        double d = A[j * k + j];
        for (size_t m = 0; m < j; ++m) d -= A[j * k + m] * A[j * k + m];
        if (!(d > 0)) throw Error("logistic calibration: the Hessian is not positive definite");
        A[j * k + j] = std::sqrt(d);
        for (size_t i = j + 1; i < k; ++i) {
            double v = A[i * k + j];
            for (size_t m = 0; m < j; ++m) v -= A[i * k + m] * A[j * k + m];
            A[i * k + j] = v / A[j * k + j];
        }
    }
    for (size_t i = 0; i < k; ++i) {  // L y = g
        for (size_t m = 0; m < i; ++m) g[i] -= A[i * k + m] * g[m];
        g[i] /= A[i * k + i];
    }
    for (size_t i = k; i-- > 0;) {  // L^T x = y
        for (size_t m = i + 1; m < k; ++m) g[i] -= A[m * k + i] * g[m];
        g[i] /= A[i * k + i];
    }
    return g;
}

Calibration fit_logistic(const std::vector<std::string>& features,
                         const std::vector<std::vector<double>>& rows, const std::vector<int>& labels,
                         double ridge, const std::string& score) {
    if (features.empty()) throw Error("logistic calibration: no features");
    for (size_t j = 0; j < features.size(); ++j) {
        if (features[j].empty()) throw Error("logistic calibration: an empty feature name");
        if (std::find(features.begin(), features.begin() + j, features[j]) != features.begin() + j)
            throw Error("logistic calibration: feature '" + features[j] + "' is listed twice");
    }
    if (!(ridge > 0) || !std::isfinite(ridge))
        throw Error("logistic calibration: ridge " + std::to_string(ridge) + " must be > 0");
    const size_t n = rows.size(), d = features.size();
    if (labels.size() != n) throw Error("logistic calibration: rows and labels differ in length");
    for (size_t i = 0; i < n; ++i) {
        if (rows[i].size() != d)
            throw Error("logistic calibration: sample " + std::to_string(i) + " has " +
                        std::to_string(rows[i].size()) + " values for " + std::to_string(d) + " features");
        for (size_t j = 0; j < d; ++j)
            if (!std::isfinite(rows[i][j]))
                throw Error("logistic calibration: feature '" + features[j] + "' of sample " +
                            std::to_string(i) + " is not finite");
    }
    check_training(std::vector<double>(n, 0.0), labels);  // sizes, 0/1 labels, both classes

    Calibration c;
    c.method = CalibrationMethod::Logistic;
    c.score = score;
    c.features = features;
    c.ridge = ridge;
    c.mean.assign(d, 0);
    c.sd.assign(d, 0);
    c.w.assign(d, 0);
    std::vector<size_t> used;  // features with a spread; the others keep weight 0
    for (size_t j = 0; j < d; ++j) {
        double m = 0, v = 0;
        for (size_t i = 0; i < n; ++i) m += rows[i][j];
        m /= n;
        for (size_t i = 0; i < n; ++i) v += (rows[i][j] - m) * (rows[i][j] - m);
        c.mean[j] = m;
        c.sd[j] = std::sqrt(v / n);
        // Rounding noise on a constant is no spread: standardising by it would blow up any other value.
        if (c.sd[j] <= 1e-12 * std::abs(m)) c.sd[j] = 0;
        if (c.sd[j] > 0) used.push_back(j);
    }

    // Damped Newton on theta = (w over the used features, bias). The objective is strictly convex (the ridge
    // on w, and the bias's curvature sum p(1-p) > 0 while the weights stay finite), so the Newton direction
    // with a backtracking line search converges from any start; the ridge keeps separable data finite.
    const size_t k = used.size() + 1;
    std::vector<double> z(n * (k - 1));
    for (size_t i = 0; i < n; ++i)
        for (size_t u = 0; u < used.size(); ++u)
            z[i * (k - 1) + u] = (rows[i][used[u]] - c.mean[used[u]]) / c.sd[used[u]];
    const double pos = (double)std::count(labels.begin(), labels.end(), 1);
    std::vector<double> theta(k, 0.0);
    theta[k - 1] = std::log(pos / (n - pos));  // the base rate: the optimum without features
    auto eta_of = [&](const std::vector<double>& t, size_t i) {
        double e = t[k - 1];
        for (size_t u = 0; u + 1 < k; ++u) e += t[u] * z[i * (k - 1) + u];
        return e;
    };
    auto objective = [&](const std::vector<double>& t) {
        double f = 0;
        for (size_t i = 0; i < n; ++i) {
            const double e = eta_of(t, i);
            f += softplus(e) - labels[i] * e;
        }
        for (size_t u = 0; u + 1 < k; ++u) f += ridge / 2 * t[u] * t[u];
        return f;
    };
    double f = objective(theta);
    for (int it = 0; it < 200; ++it) {
        std::vector<double> g(k, 0.0), H(k * k, 0.0);
        for (size_t i = 0; i < n; ++i) {
            const double p = sigmoid(eta_of(theta, i)), r = p - labels[i], v = p * (1 - p);
            const double* zi = &z[i * (k - 1)];
            for (size_t a = 0; a < k; ++a) {
                const double za = a + 1 < k ? zi[a] : 1.0;
                g[a] += r * za;
                for (size_t b = 0; b <= a; ++b) H[a * k + b] += v * za * (b + 1 < k ? zi[b] : 1.0);
            }
        }
        for (size_t u = 0; u + 1 < k; ++u) {
            g[u] += ridge * theta[u];
            H[u * k + u] += ridge;
        }
        H[k * k - 1] += 1e-12 * n;  // the bias's curvature vanishes only in the limit; keep it invertible
        for (size_t a = 0; a < k; ++a)
            for (size_t b = a + 1; b < k; ++b) H[a * k + b] = H[b * k + a];
        const std::vector<double> step = solve_spd(H, g, k);
        double decrement = 0;  // g . step: twice the expected decrease of a full step
        for (size_t a = 0; a < k; ++a) decrement += g[a] * step[a];
        if (decrement < 1e-24 * std::max(1.0, f)) break;
        double t = 1;
        std::vector<double> next(k);
        double fn = f;
        for (int half = 0; half < 60; ++half, t /= 2) {
            for (size_t a = 0; a < k; ++a) next[a] = theta[a] - t * step[a];
            fn = objective(next);
            if (fn <= f - 1e-4 * t * decrement) break;
        }
        if (!(fn < f)) break;  // rounding: no step lowers the objective any more
        theta = next;
        f = fn;
    }
    for (size_t u = 0; u < used.size(); ++u) c.w[used[u]] = theta[u];
    c.bias = theta[k - 1];

    std::vector<double> eta(n);
    for (size_t i = 0; i < n; ++i) eta[i] = eta_of(theta, i);
    fill_training(c, eta, labels);
    c.direction = 1;
    return c;
}

double Calibration::apply(double raw) const {
    if (method == CalibrationMethod::Logistic)
        throw Error("calibration '" + score +
                    "': logistic combines several scores; apply it to an answer's scores");
    if (std::isnan(raw)) return raw;
    if (method == CalibrationMethod::Platt) return 1 / (1 + std::exp(-(a * raw + b)));
    if (raw <= x.front()) return y.front();
    if (raw >= x.back()) return y.back();
    const size_t j = std::upper_bound(x.begin(), x.end(), raw) - x.begin();  // x[j-1] <= raw < x[j]
    const double t = (raw - x[j - 1]) / (x[j] - x[j - 1]);
    return y[j - 1] + t * (y[j] - y[j - 1]);
}

double Calibration::apply(const std::map<std::string, double>& scores) const {
    auto value = [&](const std::string& name) {
        auto it = scores.find(name);
        if (it == scores.end())
            throw Error("calibration " + (path.empty() ? std::string() : "'" + path + "' ") + "(" + score +
                        "): the answer has no score '" + name +
                        "' (fitted on scores this kvlens does not compute)");
        return it->second;
    };
    if (method != CalibrationMethod::Logistic) return apply(value(score));
    double e = bias;
    for (size_t j = 0; j < features.size(); ++j) {
        const double v = value(features[j]);  // present even when dropped: the file names it
        if (std::isnan(v)) return v;
        if (sd[j] > 0) e += w[j] * (v - mean[j]) / sd[j];
    }
    return sigmoid(e);
}

static json model_json(const CalibrationModel& m) {
    json j = json::object();
    if (!m.file.empty()) j["file"] = m.file;
    if (m.size >= 0) j["size"] = m.size;
    if (!m.name.empty()) j["name"] = m.name;
    if (!m.arch.empty()) j["arch"] = m.arch;
    if (m.n_layer > 0) j["n_layer"] = m.n_layer;
    return j;
}

std::string calibration_to_json(const Calibration& c) {
    // Version 2 only for what version 1 cannot say, so that plain files stay readable by older kvlens.
    const bool v2 = c.method == CalibrationMethod::Logistic || !c.model.empty() || !c.part.empty();
    json j = {{"format", "kvlens-calibration"},
              {"version", v2 ? 2 : 1},
              {"method", to_string(c.method)},
              {"score", c.score},
              {"direction", c.direction},
              {"n", c.n},
              {"n_correct", c.n_correct},
              {"train_auroc", c.train_auroc},
              {"source", c.source}};
    if (!c.part.empty()) j["part"] = c.part;
    if (!c.model.empty()) j["model"] = model_json(c.model);
    if (c.method == CalibrationMethod::Isotonic) {
        j["x"] = c.x;
        j["y"] = c.y;
    } else if (c.method == CalibrationMethod::Platt) {
        j["a"] = c.a;
        j["b"] = c.b;
    } else {
        j["features"] = c.features;
        j["mean"] = c.mean;
        j["std"] = c.sd;
        j["weights"] = c.w;
        j["bias"] = c.bias;
        j["ridge"] = c.ridge;
    }
    return j.dump(1) + "\n";
}

static void check_logistic(const Calibration& c, const std::function<Error(const std::string&)>& bad) {
    const size_t d = c.features.size();
    if (d == 0) throw bad("logistic: no features");
    if (c.mean.size() != d || c.sd.size() != d || c.w.size() != d)
        throw bad("logistic: features, mean, std and weights must be equally long");
    if (c.score != "combined" && c.score.rfind("combined:", 0) != 0)
        throw bad("logistic: score must be \"combined\" or \"combined:<name>\"");
    if (c.direction != 1) throw bad("logistic: direction must be 1");
    for (size_t j = 0; j < d; ++j) {
        const std::string f = "feature '" + c.features[j] + "'";
        if (std::find(c.features.begin(), c.features.begin() + j, c.features[j]) != c.features.begin() + j)
            throw bad(f + " is listed twice");
        if (!std::isfinite(c.mean[j]) || !std::isfinite(c.w[j]) || !(c.sd[j] >= 0) || !std::isfinite(c.sd[j]))
            throw bad(f + ": mean and weight must be finite, std finite and >= 0");
        if (c.sd[j] == 0 && c.w[j] != 0) throw bad(f + ": std 0 (dropped) needs weight 0");
    }
    if (!std::isfinite(c.bias)) throw bad("logistic: bias must be finite");
}

Calibration calibration_from_json(const std::string& text, const std::string& origin) {
    auto bad = [&](const std::string& what) { return Error("calibration file '" + origin + "': " + what); };
    json j;
    try {
        j = json::parse(text);
    } catch (const std::exception&) {
        throw bad("not valid JSON");
    }
    // Not j.value("format", ...): it throws nlohmann's type_error for a "format" that is not a string
    // (fuzz_calibration).
    if (!j.is_object() || !j.contains("format") || j["format"] != "kvlens-calibration")
        throw bad("not a kvlens calibration (\"format\" is not \"kvlens-calibration\")");
    try {
        const int v = json_get<int>(j.at("version"));
        if (v < 1 || v > Calibration::kVersion)
            throw bad("version " + std::to_string(v) + " is not supported (this kvlens reads versions 1 to " +
                      std::to_string(Calibration::kVersion) + ")");
        Calibration c;
        c.method = parse_calibration_method(j.at("method").get<std::string>());
        c.score = j.at("score").get<std::string>();
        c.direction = json_get<int>(j.at("direction"));
        if (c.direction != 1 && c.direction != -1) throw bad("direction must be 1 or -1");
        c.n = json_value(j, "n", 0);
        c.n_correct = json_value(j, "n_correct", 0);
        c.train_auroc = j.value("train_auroc", 0.0);
        c.source = j.value("source", std::string());
        c.part = j.value("part", std::string());
        if (j.contains("model")) {
            const json& m = j.at("model");
            if (!m.is_object()) throw bad("\"model\" must be an object");
            c.model.file = m.value("file", std::string());
            c.model.size = json_value(m, "size", (int64_t)-1);
            c.model.name = m.value("name", std::string());
            c.model.arch = m.value("arch", std::string());
            c.model.n_layer = json_value(m, "n_layer", 0);
        }
        if (c.method == CalibrationMethod::Logistic) {
            if (v < 2) throw bad("method logistic needs version 2");
            c.features = j.at("features").get<std::vector<std::string>>();
            c.mean = j.at("mean").get<std::vector<double>>();
            c.sd = j.at("std").get<std::vector<double>>();
            c.w = j.at("weights").get<std::vector<double>>();
            c.bias = j.at("bias").get<double>();
            c.ridge = j.value("ridge", 0.0);
            check_logistic(c, bad);
            return c;
        }
        if (c.method == CalibrationMethod::Platt) {
            c.a = j.at("a").get<double>();
            c.b = j.at("b").get<double>();
            if (!std::isfinite(c.a) || !std::isfinite(c.b)) throw bad("a and b must be finite");
            if ((c.a < 0 ? -1 : 1) != c.direction) throw bad("the sign of a contradicts direction");
            return c;
        }
        c.x = j.at("x").get<std::vector<double>>();
        c.y = j.at("y").get<std::vector<double>>();
        if (c.x.empty() || c.x.size() != c.y.size()) throw bad("x and y must be non-empty and equally long");
        for (size_t i = 0; i < c.x.size(); ++i) {
            if (!std::isfinite(c.x[i]) || !(c.y[i] >= 0 && c.y[i] <= 1))
                throw bad("knot " + std::to_string(i) + ": x must be finite and y in [0, 1]");
            if (i == 0) continue;
            if (!(c.x[i] > c.x[i - 1]))
                throw bad("x must increase strictly (knot " + std::to_string(i) + ")");
            if (c.direction * (c.y[i] - c.y[i - 1]) < 0)
                throw bad("y is not monotone in the stated direction (knot " + std::to_string(i) + ")");
        }
        return c;
    } catch (const json::exception& e) {
        throw bad(std::string("missing or mistyped field (") + e.what() + ")");
    }
}

void save_calibration(const Calibration& c, const std::string& path) {
    std::ofstream f(path);
    f << calibration_to_json(c);
    if (!f) throw Error("calibration file '" + path + "': cannot write");
}

Calibration load_calibration(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw Error("calibration file '" + path + "': cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    Calibration c = calibration_from_json(ss.str(), path);
    c.path = path;
    return c;
}

std::string default_calibration_path(const std::string& model_path, const std::string& score) {
    std::string base = model_path;
    const std::string ext = ".gguf";
    if (base.size() >= ext.size() && base.compare(base.size() - ext.size(), ext.size(), ext) == 0)
        base.resize(base.size() - ext.size());
    return base + ".calibration." + score + ".json";
}

std::map<std::string, double> calibrated_scores(const std::map<std::string, double>& scores,
                                                const std::vector<Calibration>& cals) {
    std::map<std::string, double> out;
    for (const Calibration& c : cals)
        if (c.method == CalibrationMethod::Logistic || scores.count(c.score))
            out["p_correct." + c.score] = c.apply(scores);
    return out;
}

CalibrationModel calibration_model_of(const std::string& path, const std::string& name,
                                      const std::string& arch, int n_layer) {
    CalibrationModel m;
    m.file = std::filesystem::path(path).filename().string();
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (!ec) m.size = (int64_t)size;
    m.name = name;
    m.arch = arch;
    m.n_layer = n_layer;
    return m;
}

CalibrationModel read_run_model(const std::string& run_dir) {
    const std::string path = (std::filesystem::path(run_dir) / "run.json").string();
    std::ifstream f(path);
    if (!f) return {};
    json j;
    try {
        j = json::parse(f);
    } catch (const std::exception&) {
        throw Error("'" + path + "': not valid JSON");
    }
    const json id = j.is_object() ? j.value("identity", json::object()) : json::object();
    const json mi = j.is_object() ? j.value("model_info", json::object()) : json::object();
    if (!id.is_object() || !id.contains("model") || !id["model"].is_string())
        throw Error("'" + path + "': no identity.model (not the run.json of an eval or router run?)");
    auto text = [](const json& o, const char* k) {
        return o.is_object() && o.contains(k) && o[k].is_string() ? o[k].get<std::string>() : std::string();
    };
    const int n_layer = mi.is_object() && mi.contains("n_layer") && mi["n_layer"].is_number_integer()
                            ? json_get<int>(mi["n_layer"])
                            : 0;
    return calibration_model_of(id["model"].get<std::string>(), text(mi, "name"), text(mi, "arch"), n_layer);
}

void check_calibration_model(const Calibration& c, const CalibrationModel& loaded) {
    const CalibrationModel& m = c.model;
    const bool differs = (m.size >= 0 && loaded.size >= 0 && m.size != loaded.size) ||
                         (!m.name.empty() && !loaded.name.empty() && m.name != loaded.name) ||
                         (!m.arch.empty() && !loaded.arch.empty() && m.arch != loaded.arch) ||
                         (m.n_layer > 0 && loaded.n_layer > 0 && m.n_layer != loaded.n_layer);
    if (differs)
        throw Error((c.path.empty() ? "calibration '" + c.score : "calibration file '" + c.path) +
                    "': fitted for model " + m.describe() + ", not for the loaded " + loaded.describe() +
                    " (its scores mean something else there; fit one with kvlens calibrate)");
}

void read_labelled_scores(const std::string& path, const std::string& score, std::vector<double>& scores,
                          std::vector<int>& labels) {
    std::ifstream f(path);
    if (!f) throw Error("'" + path + "': cannot open");
    std::string line;
    int lineno = 0;
    auto take = [&](const json& r) {
        if (!r.contains("scores") || !r["scores"].contains(score) || !r.contains("correct"))
            throw Error("'" + path + "' line " + std::to_string(lineno) +
                        ": no \"correct\" label or no score '" + score + "'");
        scores.push_back(r["scores"][score].get<double>());
        labels.push_back(r["correct"].get<bool>() ? 1 : 0);
    };
    while (std::getline(f, line)) {
        ++lineno;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
            const json r = json::parse(line);
            if (r.contains("samples") && r["samples"].is_array()) {
                for (const json& s : r["samples"]) take(s);
            } else {
                take(r);
            }
        } catch (const json::exception& e) {
            throw Error("'" + path + "' line " + std::to_string(lineno) + ": " + e.what());
        }
    }
    if (scores.empty()) throw Error("'" + path + "': no labelled samples");
}

LabelledRows read_labelled_rows(const std::string& path, const std::vector<std::string>& features,
                                const std::function<bool(const std::string& id)>& keep) {
    std::ifstream f(path);
    if (!f) throw Error("'" + path + "': cannot open");
    LabelledRows out;
    std::string line;
    int lineno = 0;
    auto where = [&] { return "'" + path + "' line " + std::to_string(lineno); };
    auto take = [&](const json& r) {
        if (!r.contains("correct") || !r["correct"].is_boolean())
            throw Error(where() + ": no \"correct\" label");
        if (!r.contains("scores") || !r["scores"].is_object()) throw Error(where() + ": no \"scores\"");
        std::vector<double> row;
        for (const std::string& name : features) {
            const json& sc = r["scores"];
            if (!sc.contains(name)) throw Error(where() + ": no score '" + name + "'");
            if (sc[name].is_null()) {  // NaN is written as null: this answer has no such value
                ++out.n_skipped;
                return;
            }
            if (!sc[name].is_number()) throw Error(where() + ": score '" + name + "' is not a number");
            row.push_back(sc[name].get<double>());
        }
        out.rows.push_back(std::move(row));
        out.labels.push_back(r["correct"].get<bool>() ? 1 : 0);
    };
    while (std::getline(f, line)) {
        ++lineno;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        ++out.n_lines;
        json r;
        try {
            r = json::parse(line);
        } catch (const json::exception&) {
            throw Error(where() + ": not valid JSON");
        }
        if (!r.is_object()) throw Error(where() + ": not a JSON object");
        if (keep) {
            if (!r.contains("id") || !r["id"].is_string())
                throw Error(where() + ": no \"id\" to split the questions by (use --part all)");
            bool kept;
            try {
                kept = keep(r["id"].get<std::string>());
            } catch (const Error& e) {
                throw Error(where() + ": " + e.what());
            }
            if (!kept) continue;
        }
        ++out.n_kept_lines;
        if (r.contains("samples") && r["samples"].is_array()) {
            for (const json& s : r["samples"]) take(s);
        } else {
            take(r);
        }
    }
    if (out.rows.empty())
        throw Error("'" + path + "': no labelled samples" +
                    (out.n_skipped ? " with every feature (" + std::to_string(out.n_skipped) + " had a null)"
                     : keep && out.n_lines ? " in the chosen part"
                                           : ""));
    return out;
}

}  // namespace kvlens
