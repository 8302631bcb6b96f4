// metrics-ref: the kvlens metrics as JSON lines, for tests/python/test_metrics_reference.py (test-only tool).
//
// stdin, one JSON object a line, either
//   {"scores": [...], "labels": [0/1, ...]} with optionally "bootstrap": {"resamples": B, "seed": S,
//   "level"}, "lengths": [...] with "n_bins" (default 5), and "test": {"scores", "lengths"} (a set the length
//   fit is applied to); stdout: {"n", "n_correct", "accuracy", "auroc", "aupr", "fpr95", "prr", "roc":
//   {"fpr", "tpr", "thresholds"}[, "bootstrap"][, "auroc_within_bins", "length_fit": {"slope", "intercept"},
//   "residual"[, "test_residual"]]}
// or {"paired": {"a": [...], "b": [...]}, "bootstrap": {...}}: the paired bootstrap interval of mean(a) -
// mean(b); stdout: {"difference", "bootstrap"}
// or {"ids": [...]} with optionally "dev_fraction" (default 0.3); stdout: {"hashes", "parts":
// ["dev"/"test"]}. NaN and the +inf first threshold print as null (JSON has neither). A line that cannot be
// evaluated prints
// {"error": "..."} and the tool goes on with the next line.
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/metrics.h"
#include "eval/split.h"
#include "util/error.h"

using nlohmann::json;

namespace {

json split(const json& in) {
    const double dev_fraction = in.value("dev_fraction", 0.3);
    json hashes = json::array(), parts = json::array();
    for (const std::string& id : in.at("ids").get<std::vector<std::string>>()) {
        hashes.push_back(kvlens::split_hash(id));
        parts.push_back(kvlens::part_name(kvlens::split_part(id, dev_fraction)));
    }
    return {{"hashes", hashes}, {"parts", parts}};
}

json evaluate(const json& in) {
    if (in.contains("ids")) return split(in);
    if (in.contains("paired")) {
        const auto a = in.at("paired").at("a").get<std::vector<int>>();
        const auto b = in.at("paired").at("b").get<std::vector<int>>();
        const json& bs = in.at("bootstrap");
        const kvlens::AurocInterval ci = kvlens::bootstrap_mean_difference(
            a, b, bs.value("resamples", 1000), bs.value("seed", std::uint64_t{0}), bs.value("level", 0.95));
        double diff = 0;
        for (size_t i = 0; i < a.size(); ++i) diff += a[i] - b[i];
        return {{"difference", a.empty() ? 0.0 : diff / (double)a.size()},
                {"bootstrap",
                 {{"lo", ci.lo}, {"hi", ci.hi}, {"resamples", ci.resamples}, {"skipped", ci.skipped}}}};
    }
    const auto scores = in.at("scores").get<std::vector<double>>();
    const auto labels = in.at("labels").get<std::vector<int>>();
    const kvlens::BinaryMetrics m = kvlens::binary_metrics(scores, labels);
    const kvlens::RocCurve roc = kvlens::roc_curve(scores, labels);
    json out = {{"n", m.n},
                {"n_correct", m.n_correct},
                {"accuracy", m.accuracy},
                {"auroc", m.auroc},
                {"aupr", m.aupr},
                {"fpr95", m.fpr95},
                {"prr", m.prr},
                {"roc", {{"fpr", roc.fpr}, {"tpr", roc.tpr}, {"thresholds", roc.thresholds}}}};
    if (in.contains("bootstrap")) {
        const json& b = in.at("bootstrap");
        const kvlens::AurocInterval ci =
            kvlens::bootstrap_auroc(scores, labels, b.value("resamples", 1000),
                                    b.value("seed", std::uint64_t{0}), b.value("level", 0.95));
        out["bootstrap"] = {
            {"lo", ci.lo}, {"hi", ci.hi}, {"resamples", ci.resamples}, {"skipped", ci.skipped}};
    }
    if (in.contains("lengths")) {
        const auto lengths = in.at("lengths").get<std::vector<double>>();
        out["auroc_within_bins"] = kvlens::auroc_within_bins(scores, labels, lengths, in.value("n_bins", 5));
        const kvlens::LengthResidual fit = kvlens::fit_length_residual(scores, lengths);
        out["length_fit"] = {{"slope", fit.slope}, {"intercept", fit.intercept}};
        out["residual"] = kvlens::residual_scores(scores, lengths, fit);
        if (in.contains("test")) {
            const json& test = in.at("test");
            out["test_residual"] =
                kvlens::residual_scores(test.at("scores").get<std::vector<double>>(),
                                        test.at("lengths").get<std::vector<double>>(), fit);
        }
    }
    return out;
}

}  // namespace

int main() {
    std::string line;
    int line_no = 0;
    while (std::getline(std::cin, line)) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        json out;
        try {
            out = evaluate(json::parse(line));
        } catch (const std::exception& e) {  // kvlens::Error and json errors alike: report and go on
            out = {{"error", "stdin line " + std::to_string(line_no) + ": " + e.what()}};
        }
        std::cout << out.dump() << '\n';
    }
    return 0;
}
