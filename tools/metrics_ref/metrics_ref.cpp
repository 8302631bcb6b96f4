// metrics-ref: the kvlens metrics as JSON lines, for tests/python/test_metrics_reference.py (test-only tool).
//
// stdin, one JSON object a line: {"scores": [...], "labels": [0/1, ...]} and optionally
// "bootstrap": {"resamples": B, "seed": S}. stdout, one line each:
// {"n", "n_correct", "accuracy", "auroc", "aupr", "fpr95", "roc": {"fpr", "tpr", "thresholds"}[,
// "bootstrap"]} NaN and the +inf first threshold print as null (JSON has neither). A line that cannot be
// evaluated prints
// {"error": "..."} and the tool goes on with the next line.
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/metrics.h"
#include "util/error.h"

using nlohmann::json;

namespace {

json evaluate(const json& in) {
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
                {"roc", {{"fpr", roc.fpr}, {"tpr", roc.tpr}, {"thresholds", roc.thresholds}}}};
    if (in.contains("bootstrap")) {
        const json& b = in.at("bootstrap");
        const kvlens::AurocInterval ci =
            kvlens::bootstrap_auroc(scores, labels, b.value("resamples", 1000),
                                    b.value("seed", std::uint64_t{0}), b.value("level", 0.95));
        out["bootstrap"] = {
            {"lo", ci.lo}, {"hi", ci.hi}, {"resamples", ci.resamples}, {"skipped", ci.skipped}};
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
