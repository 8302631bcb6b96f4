// Calibration: monotone, both directions, per-bin agreement with the training accuracy, file round trip and
// clear errors for bad files.
#include "methods/calibration.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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
    std::string v2 = ok;
    v2.replace(v2.find("\"version\":1"), 11, "\"version\":2");
    EXPECT_NE(error_of(v2).find("version 2 is not supported"), std::string::npos);
    std::string decreasing = ok;
    decreasing.replace(decreasing.find("[0.2,0.8]"), 9, "[0.8,0.2]");
    EXPECT_NE(error_of(decreasing).find("not monotone"), std::string::npos);
    std::string missing = ok;
    missing.replace(missing.find(",\"x\":[0,1]"), 10, "");
    EXPECT_NE(error_of(missing).find("missing or mistyped field"), std::string::npos);
    EXPECT_THROW(load_calibration("/nonexistent/calib.json"), Error);
}

}  // namespace
