#include "methods/calibration.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "util/error.h"

namespace kvlens {

using nlohmann::json;

CalibrationMethod parse_calibration_method(const std::string& s) {
    if (s == "isotonic") return CalibrationMethod::Isotonic;
    if (s == "platt") return CalibrationMethod::Platt;
    throw Error("calibration method '" + s + "': expected isotonic or platt");
}

const char* to_string(CalibrationMethod m) {
    return m == CalibrationMethod::Isotonic ? "isotonic" : "platt";
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
    return m == CalibrationMethod::Isotonic ? fit_isotonic(scores, labels) : fit_platt(scores, labels);
}

double Calibration::apply(double raw) const {
    if (std::isnan(raw)) return raw;
    if (method == CalibrationMethod::Platt) return 1 / (1 + std::exp(-(a * raw + b)));
    if (raw <= x.front()) return y.front();
    if (raw >= x.back()) return y.back();
    const size_t j = std::upper_bound(x.begin(), x.end(), raw) - x.begin();  // x[j-1] <= raw < x[j]
    const double t = (raw - x[j - 1]) / (x[j] - x[j - 1]);
    return y[j - 1] + t * (y[j] - y[j - 1]);
}

std::string calibration_to_json(const Calibration& c) {
    json j = {{"format", "kvlens-calibration"},
              {"version", Calibration::kVersion},
              {"method", to_string(c.method)},
              {"score", c.score},
              {"direction", c.direction},
              {"n", c.n},
              {"n_correct", c.n_correct},
              {"train_auroc", c.train_auroc},
              {"source", c.source}};
    if (c.method == CalibrationMethod::Isotonic) {
        j["x"] = c.x;
        j["y"] = c.y;
    } else {
        j["a"] = c.a;
        j["b"] = c.b;
    }
    return j.dump(1) + "\n";
}

Calibration calibration_from_json(const std::string& text, const std::string& origin) {
    auto bad = [&](const std::string& what) { return Error("calibration file '" + origin + "': " + what); };
    json j;
    try {
        j = json::parse(text);
    } catch (const std::exception&) {
        throw bad("not valid JSON");
    }
    if (!j.is_object() || j.value("format", std::string()) != "kvlens-calibration")
        throw bad("not a kvlens calibration (\"format\" is not \"kvlens-calibration\")");
    try {
        const int v = j.at("version").get<int>();
        if (v != Calibration::kVersion)
            throw bad("version " + std::to_string(v) + " is not supported (this kvlens reads version " +
                      std::to_string(Calibration::kVersion) + ")");
        Calibration c;
        c.method = parse_calibration_method(j.at("method").get<std::string>());
        c.score = j.at("score").get<std::string>();
        c.direction = j.at("direction").get<int>();
        if (c.direction != 1 && c.direction != -1) throw bad("direction must be 1 or -1");
        c.n = j.value("n", 0);
        c.n_correct = j.value("n_correct", 0);
        c.train_auroc = j.value("train_auroc", 0.0);
        c.source = j.value("source", std::string());
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
    return calibration_from_json(ss.str(), path);
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
    for (const Calibration& c : cals) {
        auto it = scores.find(c.score);
        if (it != scores.end()) out["p_correct." + c.score] = c.apply(it->second);
    }
    return out;
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

}  // namespace kvlens
