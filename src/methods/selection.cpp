#include "methods/selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "util/error.h"

namespace kvlens {

Strategy parse_strategy(const std::string& s) {
    if (s == "first") return Strategy::First;
    if (s == "best") return Strategy::BestOfN;
    if (s == "majority") return Strategy::Majority;
    if (s == "weighted") return Strategy::WeightedVote;
    throw Error("strategy '" + s + "': expected first, best, majority or weighted");
}

const char* to_string(Strategy s) {
    switch (s) {
        case Strategy::First:
            return "first";
        case Strategy::BestOfN:
            return "best";
        case Strategy::Majority:
            return "majority";
        case Strategy::WeightedVote:
            return "weighted";
    }
    return "?";
}

static int count_answer(const std::vector<Candidate>& c, const std::string& a) {
    return (int)std::count_if(c.begin(), c.end(), [&](const Candidate& x) { return x.answer == a; });
}

Choice select_answer(Strategy s, const std::vector<Candidate>& c) {
    if (c.empty()) throw Error("select: no candidates");
    const int n = (int)c.size();
    std::vector<int> answered;
    for (int i = 0; i < n; ++i)
        if (!c[i].answer.empty()) answered.push_back(i);

    Choice ch;
    auto pick = [&](int i) {
        ch.index = i;
        ch.answer = c[i].answer;
        ch.votes = c[i].answer.empty() ? 1 : count_answer(c, c[i].answer);
    };
    if (s == Strategy::First || answered.empty()) {
        pick(0);
        ch.confidence = s == Strategy::First || s == Strategy::BestOfN ? c[0].score : 0.0;
        return ch;
    }
    if (s == Strategy::BestOfN) {
        int best = answered[0];
        for (int i : answered) {
            const double a = c[i].score, b = c[best].score;
            if (!std::isnan(a) && (std::isnan(b) || a > b)) best = i;  // strict: ties keep the lower index
        }
        pick(best);
        ch.confidence = c[best].score;
        return ch;
    }

    // Votes: answers in order of first occurrence, so that a strict '>' breaks ties towards the earliest.
    std::vector<std::string> order;
    std::map<std::string, std::pair<int, double>> tally;  // answer -> (first index, weight)
    double total = 0;
    for (int i : answered) {
        double w = 1.0;
        if (s == Strategy::WeightedVote) {
            w = c[i].score;
            if (!(w >= 0) || std::isinf(w))
                throw Error("weighted vote: weight " + std::to_string(w) + " of sample " + std::to_string(i) +
                            " is not a finite number >= 0 (use calibrated probabilities)");
        }
        auto it = tally.find(c[i].answer);
        if (it == tally.end()) {
            tally[c[i].answer] = {i, w};
            order.push_back(c[i].answer);
        } else {
            it->second.second += w;
        }
        total += w;
    }
    const std::string* best = &order[0];
    for (const std::string& a : order)
        if (tally[a].second > tally[*best].second) best = &a;
    pick(tally[*best].first);
    ch.confidence = s == Strategy::Majority ? (double)ch.votes / n
                    : total > 0             ? tally[*best].second / total
                                            : 0.0;
    return ch;
}

std::vector<CoveragePoint> coverage_curve(const std::vector<double>& confidence,
                                          const std::vector<int>& correct) {
    if (confidence.size() != correct.size()) throw Error("coverage_curve: sizes differ");
    const size_t n = confidence.size();
    // NaN sorts last, as -inf.
    auto key = [&](size_t i) {
        return std::isnan(confidence[i]) ? -std::numeric_limits<double>::infinity() : confidence[i];
    };
    std::vector<size_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return key(a) > key(b); });
    std::vector<CoveragePoint> out;
    int n_ok = 0;
    for (size_t k = 0; k < n; ++k) {
        n_ok += correct[idx[k]] ? 1 : 0;
        if (k + 1 < n && key(idx[k + 1]) == key(idx[k])) continue;  // close a tied group first
        out.push_back({key(idx[k]), (double)(k + 1) / n, (double)n_ok / (k + 1)});
    }
    return out;
}

double coverage_area(const std::vector<CoveragePoint>& curve) {
    if (curve.empty()) return std::nan("");
    double area = 0, prev = 0;
    for (const CoveragePoint& p : curve) {
        area += (p.coverage - prev) * p.accuracy;
        prev = p.coverage;
    }
    return area;
}

}  // namespace kvlens
