// Calibration: monotone, both directions, per-bin agreement with the training accuracy, file round trip and
// clear errors for bad files; logistic combination (optimality, separable data, dropped features), the model
// a file was fitted for, and reading several scores per answer. (tests/python/test_calibration_reference.py
// checks the logistic fit against scikit-learn.)
#include "methods/calibration.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include "util/error.h"

using namespace kvlens;

namespace {

// n scores uniform in [-3, 3]; P(correct) = sigmoid(slope * s). slope < 0 gives a decreasing relation.
void synthetic(int n, double slope, uint32_t seed, std::vector<double>& s, std::vector<int>& y) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-3, 3), coin(0, 1);
    for (int i = 0; i < n; ++i) {
        s.push_back(u(rng));
        y.push_back(coin(rng) < 1 / (1 + std::exp(-slope * s.back())) ? 1 : 0);
    }
}

// Ten equal-count bins of the training scores: |mean calibrated - empirical accuracy| per bin.
double worst_bin_gap(const Calibration& c, const std::vector<double>& s, const std::vector<int>& y) {
    std::vector<size_t> idx(s.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return s[a] < s[b]; });
    double worst = 0;
    const size_t bins = 10, per = s.size() / bins;
    for (size_t b = 0; b < bins; ++b) {
        double p = 0, acc = 0;
        for (size_t k = b * per; k < (b + 1) * per; ++k) {
            p += c.apply(s[idx[k]]);
            acc += y[idx[k]];
        }
        worst = std::max(worst, std::abs(p - acc) / per);
    }
    return worst;
}

void expect_monotone(const Calibration& c, int direction) {
    double prev = c.apply(-10);
    for (double x = -10; x <= 10; x += 0.01) {
        const double p = c.apply(x);
        EXPECT_GE(p, 0.0);
        EXPECT_LE(p, 1.0);
        EXPECT_GE(direction * (p - prev), -1e-12) << "at " << x;
        prev = p;
    }
}

class Fit : public testing::TestWithParam<std::tuple<CalibrationMethod, double>> {};

TEST_P(Fit, MonotoneInTheFittedDirectionAndMatchesEachBin) {
    const auto [method, slope] = GetParam();
    std::vector<double> s;
    std::vector<int> y;
    synthetic(4000, slope, 11, s, y);
    const Calibration c = fit_calibration(method, s, y);
    const int dir = slope < 0 ? -1 : 1;
    EXPECT_EQ(c.direction, dir);
    EXPECT_EQ(c.n, 4000);
    EXPECT_EQ(dir * (c.train_auroc - 0.5) > 0, true);
    expect_monotone(c, dir);
    EXPECT_LT(worst_bin_gap(c, s, y), 0.05);
}

INSTANTIATE_TEST_SUITE_P(Calibration, Fit,
                         testing::Combine(testing::Values(CalibrationMethod::Isotonic,
                                                          CalibrationMethod::Platt),
                                          testing::Values(1.5, -1.5)));

TEST(Isotonic, PoolsViolatorsAndTiedScores) {
    // Labels by score: 0.1:1, 0.2:0 (a violation: pooled to 0.5), 0.3:1 and 0.3:0 (tied: one point, 0.5, not
    // a violation of 0.5), 0.4:1.
    const Calibration c = fit_isotonic({0.1, 0.2, 0.3, 0.3, 0.4}, {1, 0, 1, 0, 1});
    EXPECT_EQ(c.direction, 1);
    EXPECT_DOUBLE_EQ(c.apply(0.1), 0.5);
    EXPECT_DOUBLE_EQ(c.apply(0.2), 0.5);
    EXPECT_DOUBLE_EQ(c.apply(0.3), 0.5);
    EXPECT_DOUBLE_EQ(c.apply(0.4), 1.0);
    EXPECT_DOUBLE_EQ(c.apply(0.35), 0.75);  // linear between blocks
    EXPECT_DOUBLE_EQ(c.apply(-7), 0.5);     // constant beyond the ends
    EXPECT_TRUE(std::isnan(c.apply(NAN)));
}

TEST(Calibration, RefusesWhatCannotBeCalibrated) {
    EXPECT_THROW(fit_isotonic({0.1, 0.2}, {1, 1}), Error);
    EXPECT_THROW(fit_platt({0.1}, {1}), Error);
    EXPECT_THROW(fit_isotonic({0.1, NAN}, {1, 0}), Error);
    EXPECT_THROW(fit_isotonic({0.1, 0.2}, {1}), Error);
}

TEST(CalibrationFile, RoundTripAndDefaultPath) {
    std::vector<double> s;
    std::vector<int> y;
    synthetic(500, -1.0, 3, s, y);
    for (CalibrationMethod m : {CalibrationMethod::Isotonic, CalibrationMethod::Platt}) {
        Calibration c = fit_calibration(m, s, y);
        c.score = "kv_coe_r";
        c.source = "test";
        const std::string path = testing::TempDir() + "/calib.json";
        save_calibration(c, path);
        const Calibration d = load_calibration(path);
        EXPECT_EQ(d.method, m);
        EXPECT_EQ(d.score, "kv_coe_r");
        EXPECT_EQ(d.direction, -1);
        EXPECT_EQ(d.n, 500);
        for (double x = -4; x <= 4; x += 0.1) EXPECT_DOUBLE_EQ(d.apply(x), c.apply(x));
        const auto named = calibrated_scores({{"kv_coe_r", 0.5}, {"max_prob", 0.1}}, {d});
        ASSERT_EQ(named.size(), 1u);
        EXPECT_DOUBLE_EQ(named.at("p_correct.kv_coe_r"), c.apply(0.5));
        std::remove(path.c_str());
    }
    EXPECT_EQ(default_calibration_path("/m/SmolLM2.Q4_1.gguf", "hs_coe_c"),
              "/m/SmolLM2.Q4_1.calibration.hs_coe_c.json");
}

std::string error_of(const std::string& text) {
    try {
        calibration_from_json(text, "c.json");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(CalibrationFile, BadFilesGiveAClearError) {
    const std::string ok =
        R"({"format":"kvlens-calibration","version":1,"method":"isotonic","score":"s","direction":1,"x":[0,1],"y":[0.2,0.8]})";
    EXPECT_EQ(error_of(ok), "");
    EXPECT_NE(error_of("{").find("c.json"), std::string::npos);
    EXPECT_NE(error_of("{").find("not valid JSON"), std::string::npos);
    EXPECT_NE(error_of(R"({"version":1})").find("not a kvlens calibration"), std::string::npos);
    std::string v3 = ok;
    v3.replace(v3.find("\"version\":1"), 11, "\"version\":3");
    EXPECT_NE(error_of(v3).find("version 3 is not supported"), std::string::npos);
    std::string decreasing = ok;
    decreasing.replace(decreasing.find("[0.2,0.8]"), 9, "[0.8,0.2]");
    EXPECT_NE(error_of(decreasing).find("not monotone"), std::string::npos);
    std::string missing = ok;
    missing.replace(missing.find(",\"x\":[0,1]"), 10, "");
    EXPECT_NE(error_of(missing).find("missing or mistyped field"), std::string::npos);
    EXPECT_THROW(load_calibration("/nonexistent/calib.json"), Error);
}

// ---- logistic ------------------------------------------------------------------------------------------

// n samples of 4 features: x0, x1 ~ N(0, 1) and N(5, 2) with P(correct) = sigmoid(1.5 x0 - (x1 - 5)), x2
// noise, x3 constant.
void synthetic_rows(int n, uint32_t seed, std::vector<std::vector<double>>& rows, std::vector<int>& y) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> g(0, 1);
    std::uniform_real_distribution<double> coin(0, 1);
    for (int i = 0; i < n; ++i) {
        const double x0 = g(rng), x1 = 5 + 2 * g(rng), x2 = g(rng);
        rows.push_back({x0, x1, x2, 7.0});
        y.push_back(coin(rng) < 1 / (1 + std::exp(-(1.5 * x0 - (x1 - 5)))) ? 1 : 0);
    }
}

const std::vector<std::string> kFeatures = {"kv_coe_r", "max_prob", "inv_ppl", "neg_length"};

std::map<std::string, double> named(const std::vector<double>& row) {
    std::map<std::string, double> m;
    for (size_t j = 0; j < kFeatures.size(); ++j) m[kFeatures[j]] = row[j];
    return m;
}

// The gradient of the penalised negative log-likelihood at the fit (zero at the optimum), largest |entry|.
double worst_gradient(const Calibration& c, const std::vector<std::vector<double>>& rows,
                      const std::vector<int>& y) {
    std::vector<double> g(c.features.size() + 1, 0.0);
    for (size_t i = 0; i < rows.size(); ++i) {
        const double r = c.apply(named(rows[i])) - y[i];
        for (size_t j = 0; j < c.features.size(); ++j)
            if (c.sd[j] > 0) g[j] += r * (rows[i][j] - c.mean[j]) / c.sd[j];
        g.back() += r;
    }
    double worst = 0;
    for (size_t j = 0; j < c.features.size(); ++j) worst = std::max(worst, std::abs(g[j] + c.ridge * c.w[j]));
    return std::max(worst, std::abs(g.back()));
}

TEST(Logistic, FitsTheGeneratingModelAndDropsAConstantFeature) {
    std::vector<std::vector<double>> rows;
    std::vector<int> y;
    synthetic_rows(4000, 5, rows, y);
    const Calibration c = fit_logistic(kFeatures, rows, y, 1.0);
    EXPECT_EQ(c.method, CalibrationMethod::Logistic);
    EXPECT_EQ(c.score, "combined");
    EXPECT_EQ(c.direction, 1);
    EXPECT_EQ(c.n, 4000);
    // Weights are per standard deviation: 1.5 * 1 for x0, -1 * 2 for x1; noise near 0; the constant dropped.
    EXPECT_NEAR(c.w[0], 1.5, 0.15);
    EXPECT_NEAR(c.w[1], -2.0, 0.2);
    EXPECT_NEAR(c.w[2], 0.0, 0.1);
    EXPECT_EQ(c.sd[3], 0.0);
    EXPECT_EQ(c.w[3], 0.0);
    EXPECT_NEAR(c.mean[1], 5.0, 0.1);
    EXPECT_LT(worst_gradient(c, rows, y), 1e-8);
    EXPECT_GT(c.train_auroc, 0.8);
    // A constant feature still has to be there: the file names it.
    auto m = named(rows[0]);
    m.erase("neg_length");
    EXPECT_THROW(c.apply(m), Error);
}

TEST(Logistic, RoundingNoiseOnAConstantIsNoSpread) {
    std::vector<std::vector<double>> rows;
    std::vector<int> y;
    synthetic_rows(100, 2, rows, y);
    for (size_t i = 0; i < rows.size(); ++i)
        rows[i][3] = i % 2 ? 0.3 : 0.1 + 0.2;  // 0.3 and 0.30000000000000004
    const Calibration c = fit_logistic(kFeatures, rows, y);
    EXPECT_EQ(c.sd[3], 0.0);
    EXPECT_EQ(c.w[3], 0.0);
    auto m = named(rows[0]);
    m["neg_length"] = 0.31;  // any value: the dropped feature does not move p
    EXPECT_DOUBLE_EQ(c.apply(m), c.apply(named(rows[0])));
}

TEST(Logistic, SeparableDataStaysFiniteAndOptimal) {
    std::vector<std::vector<double>> rows;
    std::vector<int> y;
    for (int i = 0; i < 60; ++i) {
        const double x = i - 29.5;
        rows.push_back({x, std::sin(i), i % 3 * 1.0, 1.0});
        y.push_back(x > 0 ? 1 : 0);
    }
    for (double ridge : {1.0, 1e-3}) {
        const Calibration c = fit_logistic(kFeatures, rows, y, ridge, "combined:sep");
        EXPECT_EQ(c.score, "combined:sep");
        for (double w : c.w) EXPECT_TRUE(std::isfinite(w));
        EXPECT_GT(c.w[0], 0);
        EXPECT_DOUBLE_EQ(c.train_auroc, 1.0);
        EXPECT_LT(worst_gradient(c, rows, y), 1e-8) << "ridge " << ridge;
        EXPECT_GT(c.apply(named(rows.back())), 0.9);
        EXPECT_LT(c.apply(named(rows.front())), 0.1);
    }
}

TEST(Logistic, RefusesBadTrainingInput) {
    std::vector<std::vector<double>> rows = {{1, 2, 3, 4}, {2, 3, 4, 5}};
    EXPECT_THROW(fit_logistic(kFeatures, rows, {1, 1}), Error);                            // one class
    EXPECT_THROW(fit_logistic({"a", "b", "a", "c"}, rows, {1, 0}), Error);                 // repeated
    EXPECT_THROW(fit_logistic(kFeatures, rows, {1, 0}, 0.0), Error);                       // no ridge
    EXPECT_THROW(fit_logistic(kFeatures, {{1, 2, 3}, {1, 2, 3}}, {1, 0}), Error);          // short row
    EXPECT_THROW(fit_logistic(kFeatures, {{1, 2, 3, NAN}, {1, 2, 3, 4}}, {1, 0}), Error);  // NaN
    EXPECT_THROW(fit_calibration(CalibrationMethod::Logistic, {1, 2}, {1, 0}), Error);
    try {
        fit_logistic(kFeatures, {{1, 2, 3, INFINITY}, {1, 2, 3, 4}}, {1, 0});
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("neg_length"), std::string::npos) << e.what();
    }
}

TEST(Logistic, MissingFeatureNamesItNaNGivesNaN) {
    std::vector<std::vector<double>> rows;
    std::vector<int> y;
    synthetic_rows(200, 9, rows, y);
    Calibration c = fit_logistic(kFeatures, rows, y);
    c.path = "m.calibration.combined.json";
    auto m = named(rows[0]);
    m.erase("max_prob");
    try {
        calibrated_scores(m, {c});
        FAIL() << "a missing feature was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'max_prob'"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("m.calibration.combined.json"), std::string::npos) << e.what();
    }
    m = named(rows[0]);
    m["inv_ppl"] = NAN;
    EXPECT_TRUE(std::isnan(calibrated_scores(m, {c}).at("p_correct.combined")));
    EXPECT_THROW(c.apply(0.5), Error);  // one raw score means nothing to it
    // A single-score calibration whose score is absent still adds nothing (the convention before logistic).
    Calibration single = fit_platt({0.1, 0.2, 0.3, 0.4}, {0, 1, 0, 1});
    single.score = "hs_coe_c";
    EXPECT_TRUE(calibrated_scores(named(rows[0]), {single}).empty());
}

TEST(LogisticFile, RoundTripWithModelRecord) {
    std::vector<std::vector<double>> rows;
    std::vector<int> y;
    synthetic_rows(300, 4, rows, y);
    Calibration c = fit_logistic(kFeatures, rows, y, 0.5, "combined:free");
    c.source = "run/samples.jsonl";
    c.part = "dev";
    c.model = {"SmolLM2.Q4_1.gguf", 123456, "SmolLM2 135M Instruct", "llama", 30};
    const std::string text = calibration_to_json(c);
    EXPECT_NE(text.find("\"version\": 2"), std::string::npos);
    const Calibration d = calibration_from_json(text, "c.json");
    EXPECT_EQ(d.method, CalibrationMethod::Logistic);
    EXPECT_EQ(d.score, "combined:free");
    EXPECT_EQ(d.features, kFeatures);
    EXPECT_EQ(d.part, "dev");
    EXPECT_EQ(d.ridge, 0.5);
    EXPECT_EQ(d.model.file, "SmolLM2.Q4_1.gguf");
    EXPECT_EQ(d.model.size, 123456);
    EXPECT_EQ(d.model.n_layer, 30);
    for (const auto& r : rows) EXPECT_DOUBLE_EQ(d.apply(named(r)), c.apply(named(r)));
    // Plain files stay version 1 (older kvlens read them); a model record makes them version 2.
    Calibration p = fit_platt({0.1, 0.2, 0.3, 0.4}, {0, 1, 0, 1});
    p.score = "max_prob";
    EXPECT_NE(calibration_to_json(p).find("\"version\": 1"), std::string::npos);
    p.model.size = 10;
    EXPECT_NE(calibration_to_json(p).find("\"version\": 2"), std::string::npos);
    EXPECT_EQ(calibration_from_json(calibration_to_json(p), "p.json").model.size, 10);
}

TEST(LogisticFile, BadFilesGiveAClearError) {
    const std::string ok =
        R"({"format":"kvlens-calibration","version":2,"method":"logistic","score":"combined","direction":1,)"
        R"("features":["a","b"],"mean":[0,1],"std":[1,0],"weights":[0.5,0],"bias":-1,"ridge":1})";
    EXPECT_EQ(error_of(ok), "");
    const Calibration c = calibration_from_json(ok, "c.json");
    EXPECT_DOUBLE_EQ(c.apply({{"a", 2.0}, {"b", 9.0}}), 1 / (1 + std::exp(-(0.5 * 2 - 1))));
    auto with = [&](const std::string& from, const std::string& to) {
        std::string t = ok;
        t.replace(t.find(from), from.size(), to);
        return error_of(t);
    };
    EXPECT_NE(with("\"version\":2", "\"version\":1").find("needs version 2"), std::string::npos);
    EXPECT_NE(with("\"mean\":[0,1]", "\"mean\":[0]").find("equally long"), std::string::npos);
    EXPECT_NE(with("\"weights\":[0.5,0]", "\"weights\":[0.5,2]").find("feature 'b'"), std::string::npos);
    EXPECT_NE(with("[\"a\",\"b\"]", "[\"a\",\"a\"]").find("listed twice"), std::string::npos);
    EXPECT_NE(with("\"score\":\"combined\"", "\"score\":\"kv_coe_r\"").find("combined"), std::string::npos);
    EXPECT_NE(with(",\"bias\":-1", "").find("missing or mistyped field"), std::string::npos);
    EXPECT_NE(with("\"std\":[1,0]", "\"std\":[1,-1]").find("std"), std::string::npos);
    EXPECT_NE(with("\"ridge\":1}", "\"ridge\":1,\"model\":3}").find("\"model\""), std::string::npos);
}

// ---- the model a calibration is for --------------------------------------------------------------------

TEST(CalibrationModel, RefusedForAnotherModelNamingBoth) {
    Calibration c = fit_platt({0.1, 0.2, 0.3, 0.4}, {0, 1, 0, 1});
    c.path = "cal.json";
    EXPECT_NO_THROW(check_calibration_model(c, {"x.gguf", 5, "X", "qwen2", 2}));  // no record: passes
    c.model = {"a.gguf", 1000, "Tiny", "llama", 2};
    EXPECT_NO_THROW(check_calibration_model(c, {"a.gguf", 1000, "Tiny", "llama", 2}));
    EXPECT_NO_THROW(check_calibration_model(c, {"renamed.gguf", 1000, "Tiny", "llama", 2}));
    EXPECT_NO_THROW(check_calibration_model(c, {"a.gguf", 1000, "", "", 0}));  // compared where both know
    const CalibrationModel others[] = {{"a.gguf", 999, "Tiny", "llama", 2},
                                       {"a.gguf", 1000, "Other", "llama", 2},
                                       {"a.gguf", 1000, "Tiny", "qwen2", 2},
                                       {"a.gguf", 1000, "Tiny", "llama", 3}};
    for (const CalibrationModel& m : others) {
        try {
            check_calibration_model(c, m);
            FAIL() << m.describe() << " accepted";
        } catch (const Error& e) {
            const std::string msg = e.what();
            EXPECT_NE(msg.find("cal.json"), std::string::npos) << msg;
            EXPECT_NE(msg.find(c.model.describe()), std::string::npos) << msg;
            EXPECT_NE(msg.find(m.describe()), std::string::npos) << msg;
            EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
        }
    }
}

TEST(CalibrationModel, ReadFromARunDirectory) {
    const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / "calib_run";
    std::filesystem::create_directories(dir);
    std::filesystem::remove(dir / "run.json");
    EXPECT_TRUE(read_run_model(dir.string()).empty());  // no run.json: nothing recorded
    const std::string model = (dir / "m.gguf").string();
    std::ofstream(model) << "0123456789";
    std::ofstream(dir / "run.json")
        << R"({"identity":{"model":")" << model
        << R"(","dataset":"arith"},"model_info":{"arch":"llama","name":"Tiny","n_layer":2}})";
    const CalibrationModel m = read_run_model(dir.string());
    EXPECT_EQ(m.file, "m.gguf");
    EXPECT_EQ(m.size, 10);
    EXPECT_EQ(m.arch, "llama");
    EXPECT_EQ(m.name, "Tiny");
    EXPECT_EQ(m.n_layer, 2);
    std::ofstream(dir / "run.json") << "{";
    EXPECT_THROW(read_run_model(dir.string()), Error);
    std::filesystem::remove_all(dir);
}

TEST(LabelledRows, SeveralScoresPartsNullsAndErrors) {
    const std::string path = testing::TempDir() + "/rows.jsonl";
    std::ofstream(path) << R"({"id":"q1","index":0,"correct":true,"scores":{"a":1,"b":2,"c":0}})"
                           "\n"
                        << R"({"id":"q2","index":1,"correct":false,"scores":{"a":3,"b":null}})"
                           "\n"
                        << "\n"
                        << R"({"id":"q3","samples":[{"correct":false,"scores":{"a":5,"b":6}},)"
                        << R"({"correct":true,"scores":{"a":7,"b":8}}]})"
                           "\n";
    LabelledRows r = read_labelled_rows(path, {"b", "a"});
    ASSERT_EQ(r.rows.size(), 3u);
    EXPECT_EQ(r.rows[0], (std::vector<double>{2, 1}));
    EXPECT_EQ(r.rows[2], (std::vector<double>{8, 7}));
    EXPECT_EQ(r.labels, (std::vector<int>{1, 0, 1}));
    EXPECT_EQ(r.n_skipped, 1);
    EXPECT_EQ(r.n_lines, 3);
    r = read_labelled_rows(path, {"a"}, [](const std::string& id) { return id != "q3"; });
    EXPECT_EQ(r.rows.size(), 2u);
    EXPECT_EQ(r.n_kept_lines, 2);
    try {
        read_labelled_rows(path, {"a", "c"});
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("line 2: no score 'c'"), std::string::npos) << e.what();
    }
    std::ofstream(path) << R"({"correct":true,"scores":{"a":1}})"
                           "\n";
    EXPECT_THROW(read_labelled_rows(path, {"a"}, [](const std::string&) { return true; }), Error);  // no id
    std::ofstream(path) << "{oops\n";
    EXPECT_THROW(read_labelled_rows(path, {"a"}), Error);
    std::remove(path.c_str());
}

}  // namespace

// A float where an integer is expected (1e300, 3e10, 2.5) or an integer beyond int: a clear error, not the
// undefined float-to-int conversion nlohmann's get<int>() does (found by fuzz_calibration under UBSan).
TEST(CalibrationFile, OutOfRangeNumbersAreRefused) {
    const std::string head =
        R"({"format":"kvlens-calibration","method":"isotonic","score":"s","x":[0,1],"y":[0.2,0.8],)";
    for (const std::string bad : {R"("version":1e300,"direction":1)", R"("version":1,"direction":-1e300)",
                                  R"("version":1,"direction":2.5)", R"("version":4294967297,"direction":1)",
                                  R"("version":1,"direction":1,"n":3e10)",
                                  R"("version":1,"direction":1,"model":{"n_layer":1e300})"}) {
        const std::string e = error_of(head + bad + "}");
        EXPECT_NE(e.find("missing or mistyped field"), std::string::npos) << bad << " -> " << e;
    }
    EXPECT_EQ(error_of(head + R"("version":1,"direction":1,"n":30})"), "");
    // A "format" that is not a string: the file's error, not nlohmann's (fuzz_calibration).
    EXPECT_NE(error_of(R"({"format":["kvlens-calibration"],"version":1})").find("not a kvlens calibration"),
              std::string::npos);
}
