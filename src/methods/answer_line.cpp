#include "methods/answer_line.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace kvlens {

AnswerLineScores answer_line_scores(const std::vector<std::string>& pieces,
                                    const std::vector<StepStats>& steps) {
    if (pieces.size() != steps.size())
        throw Error("answer line: " + std::to_string(pieces.size()) + " token pieces for " +
                    std::to_string(steps.size()) + " steps");
    std::string text;
    std::vector<size_t> start(pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
        start[i] = text.size();
        text += pieces[i];
    }
    auto is_space = [](char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
    };
    size_t end = text.size();
    while (end > 0 && is_space(text[end - 1])) --end;
    if (end == 0) return {0, 0, 0};
    const size_t nl = text.rfind('\n', end - 1);
    const size_t begin = nl == std::string::npos ? 0 : nl + 1;
    double log_sum = 0, lowest = 1;
    int n = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
        const size_t b = start[i], e = start[i] + pieces[i].size();
        if (e <= begin || b >= end) continue;  // empty pieces never overlap
        const double p = steps[i].prob;
        log_sum += std::log(std::max(p, 1e-300));
        lowest = std::min(lowest, p);
        ++n;
    }
    return {std::exp(log_sum / n), lowest, n};
}

}  // namespace kvlens
