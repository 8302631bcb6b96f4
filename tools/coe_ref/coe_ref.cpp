// coe-ref: a test-only driver of kvlens::coe_scores for the numpy reference check
// (tests/python/test_coe_reference.py).
//
// stdin: one JSON object per line, {"chain": [[h_0...], [h_1...], ...]} (numbers, equal-length rows).
// stdout: one JSON object per input line, in order: {"mag", "ang", "r", "c", "m": [...], "a": [...],
// "endpoint_dist", "endpoint_angle", "status": flags, "status_names": "..."}, or {"error": "message"} for an
// input the scores reject (the library's kvlens::Error) or that is not a chain. Exit 0 unless stdout fails.
#include <nlohmann/json.hpp>

#include <iostream>
#include <string>
#include <vector>

#include "methods/coe.h"
#include "util/error.h"

namespace {

using nlohmann::json;

json score_line(const std::string& line) {
    const json in = json::parse(line);
    const json& rows = in.at("chain");
    if (!rows.is_array()) throw kvlens::Error("'chain' is not an array");
    const int n_states = (int)rows.size();
    const int width = n_states > 0 && rows[0].is_array() ? (int)rows[0].size() : 0;
    std::vector<double> h;
    for (int i = 0; i < n_states; ++i) {
        if (!rows[i].is_array() || (int)rows[i].size() != width)
            throw kvlens::Error("state " + std::to_string(i) + " is not a row of " + std::to_string(width) +
                                " numbers");
        for (const json& x : rows[i]) {
            if (!x.is_number()) throw kvlens::Error("state " + std::to_string(i) + " has a non-number");
            h.push_back(x.get<double>());
        }
    }
    const kvlens::CoeScores s = kvlens::coe_scores(h.data(), n_states, width);
    return {{"mag", s.mag},
            {"ang", s.ang},
            {"r", s.r},
            {"c", s.c},
            {"m", s.m},
            {"a", s.a},
            {"endpoint_dist", s.endpoint_dist},
            {"endpoint_angle", s.endpoint_angle},
            {"status", s.status},
            {"status_names", kvlens::coe_status_string(s.status)}};
}

}  // namespace

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        json out;
        try {
            out = score_line(line);
        } catch (const kvlens::Error& e) {
            out = {{"error", e.what()}};
        } catch (const json::exception& e) {
            out = {{"error", std::string("bad JSON: ") + e.what()}};
        }
        std::cout << out.dump() << '\n';
    }
    std::cout.flush();
    return std::cout ? 0 : 1;
}
