// answer_line_scores by hand: which tokens make the last line, the geometric mean and the minimum.
#include "methods/answer_line.h"

#include <gtest/gtest.h>

#include <cmath>

#include "util/error.h"

using namespace kvlens;

namespace {

std::vector<StepStats> probs(std::vector<float> p) {
    std::vector<StepStats> s;
    for (float x : p) s.push_back({x, x, 0});
    return s;
}

}  // namespace

TEST(AnswerLine, LastLineTokensByHand) {
    // "Reasoning...\n" | "The" | " answer" | " is" | ":" | " C" | ".\n" | <eog>
    const std::vector<std::string> pieces = {"Reason", "ing...\n", "The", " answer", " is",
                                             ":",      " C",       ".\n", ""};
    const auto s = answer_line_scores(pieces, probs({0.1f, 0.2f, 0.9f, 1.0f, 1.0f, 0.8f, 0.25f, 0.5f, 0.7f}));
    // The line is "The answer is: C." (the trailing newline and the empty end-of-turn piece are not on it).
    EXPECT_EQ(s.n_tokens, 6);
    EXPECT_NEAR(s.prob,
                std::exp((std::log(0.9) + std::log(1.0) + std::log(1.0) + std::log(0.8) + std::log(0.25) +
                          std::log(0.5)) /
                         6),
                1e-6);
    EXPECT_NEAR(s.min_prob, 0.25, 1e-7);
}

TEST(AnswerLine, TokenAcrossTheNewlineCountsAndOneLineOutputs) {
    // A token whose bytes straddle the line start counts: "x\nAns" holds the line's first bytes.
    auto s = answer_line_scores({"Step", "x\nAns", "wer: 4"}, probs({0.3f, 0.6f, 0.9f}));
    EXPECT_EQ(s.n_tokens, 2);
    EXPECT_NEAR(s.min_prob, 0.6, 1e-7);
    // No newline at all: the whole output is the line.
    s = answer_line_scores({"4", "2"}, probs({0.5f, 0.125f}));
    EXPECT_EQ(s.n_tokens, 2);
    EXPECT_NEAR(s.prob, 0.25, 1e-7);
    // Blank lines after the answer are skipped.
    s = answer_line_scores({"a\n", "B", "\n\n", "  "}, probs({0.1f, 0.4f, 0.9f, 0.9f}));
    EXPECT_EQ(s.n_tokens, 1);  // "B" alone: the newlines after it are not on the line
    EXPECT_NEAR(s.min_prob, 0.4, 1e-7);
}

TEST(AnswerLine, NoTextAndBadInput) {
    const auto s = answer_line_scores({" ", "\n", ""}, probs({0.5f, 0.5f, 0.5f}));
    EXPECT_EQ(s.n_tokens, 0);
    EXPECT_EQ(s.prob, 0);
    EXPECT_EQ(s.min_prob, 0);
    EXPECT_THROW(answer_line_scores({"a"}, probs({})), Error);
}
