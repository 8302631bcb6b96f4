// Selection and voting on hand-made candidates, ties included; the accuracy-coverage curve and its area.
#include "methods/selection.h"

#include <gtest/gtest.h>

#include <cmath>

#include "util/error.h"

using namespace kvlens;

namespace {

std::vector<Candidate> cands(std::vector<std::pair<std::string, double>> v) {
    std::vector<Candidate> c;
    for (auto& [a, s] : v) c.push_back({a, s});
    return c;
}

TEST(Selection, FirstIsSampleZero) {
    const Choice ch = select_answer(Strategy::First, cands({{"3", 0.1}, {"4", 0.9}}));
    EXPECT_EQ(ch.index, 0);
    EXPECT_EQ(ch.answer, "3");
    EXPECT_DOUBLE_EQ(ch.confidence, 0.1);
}

TEST(Selection, BestOfNTakesTheHighestScoreAndTiesGoToTheLowestIndex) {
    EXPECT_EQ(select_answer(Strategy::BestOfN, cands({{"1", 0.2}, {"2", 0.7}, {"3", 0.5}})).index, 1);
    const Choice tie = select_answer(Strategy::BestOfN, cands({{"1", 0.2}, {"2", 0.7}, {"3", 0.7}}));
    EXPECT_EQ(tie.index, 1);
    EXPECT_EQ(tie.answer, "2");
    EXPECT_DOUBLE_EQ(tie.confidence, 0.7);
    // NaN ranks last; an empty answer is skipped even with the best score.
    EXPECT_EQ(select_answer(Strategy::BestOfN, cands({{"1", NAN}, {"2", -5}})).index, 1);
    EXPECT_EQ(select_answer(Strategy::BestOfN, cands({{"", 9}, {"2", 0.1}})).index, 1);
}

TEST(Selection, MajorityCountsAnswersAndTiesGoToTheEarliestFirstOccurrence) {
    const Choice ch =
        select_answer(Strategy::Majority, cands({{"5", 0}, {"7", 0}, {"7", 0}, {"5", 0}, {"7", 0}}));
    EXPECT_EQ(ch.answer, "7");
    EXPECT_EQ(ch.index, 1);
    EXPECT_EQ(ch.votes, 3);
    EXPECT_DOUBLE_EQ(ch.confidence, 3.0 / 5);
    // 2-2 tie: "9" occurs first (index 1) before "4" (index 2)... and empty answers do not vote.
    const Choice tie =
        select_answer(Strategy::Majority, cands({{"", 0}, {"9", 0}, {"4", 0}, {"4", 0}, {"9", 0}}));
    EXPECT_EQ(tie.answer, "9");
    EXPECT_EQ(tie.index, 1);
    EXPECT_DOUBLE_EQ(tie.confidence, 2.0 / 5);
}

TEST(Selection, WeightedVoteSumsScoresAndCanOverruleTheMajority) {
    // "1" has 2 votes weighing 0.2 + 0.2, "2" one vote of 0.9: the weight wins.
    const Choice ch = select_answer(Strategy::WeightedVote, cands({{"1", 0.2}, {"2", 0.9}, {"1", 0.2}}));
    EXPECT_EQ(ch.answer, "2");
    EXPECT_EQ(ch.index, 1);
    EXPECT_NEAR(ch.confidence, 0.9 / 1.3, 1e-12);
    EXPECT_EQ(select_answer(Strategy::Majority, cands({{"1", 0.2}, {"2", 0.9}, {"1", 0.2}})).answer, "1");
    // Exact tie of weights (0.5 + 0.25 = 0.75 each, exact in binary): the earliest answer wins.
    const Choice tie = select_answer(Strategy::WeightedVote, cands({{"8", 0.25}, {"6", 0.75}, {"8", 0.5}}));
    EXPECT_EQ(tie.answer, "8");
    EXPECT_EQ(tie.index, 0);
    // All-zero weights: a tie of all answers; earliest wins, confidence 0.
    const Choice zero = select_answer(Strategy::WeightedVote, cands({{"3", 0}, {"4", 0}}));
    EXPECT_EQ(zero.answer, "3");
    EXPECT_DOUBLE_EQ(zero.confidence, 0);
    EXPECT_THROW(select_answer(Strategy::WeightedVote, cands({{"3", -0.1}})), Error);
    EXPECT_THROW(select_answer(Strategy::WeightedVote, cands({{"3", NAN}})), Error);
}

TEST(Selection, NoAnswerAnywhereFallsBackToTheFirstSample) {
    for (Strategy s : {Strategy::BestOfN, Strategy::Majority, Strategy::WeightedVote}) {
        const Choice ch = select_answer(s, cands({{"", 0.1}, {"", 0.9}}));
        EXPECT_EQ(ch.index, 0) << to_string(s);
        EXPECT_EQ(ch.answer, "");
    }
    EXPECT_THROW(select_answer(Strategy::First, {}), Error);
}

TEST(Selection, StrategyNames) {
    for (Strategy s : {Strategy::First, Strategy::BestOfN, Strategy::Majority, Strategy::WeightedVote})
        EXPECT_EQ(parse_strategy(to_string(s)), s);
    EXPECT_THROW(parse_strategy("best-of-n"), Error);
}

TEST(Coverage, CurveAndAreaWithTies) {
    // Confidences 0.9 (ok), 0.5 (wrong), 0.5 (ok), 0.1 (wrong): the 0.5 pair is one point.
    const auto curve = coverage_curve({0.5, 0.9, 0.1, 0.5}, {0, 1, 0, 1});
    ASSERT_EQ(curve.size(), 3u);
    EXPECT_DOUBLE_EQ(curve[0].coverage, 0.25);
    EXPECT_DOUBLE_EQ(curve[0].accuracy, 1.0);
    EXPECT_DOUBLE_EQ(curve[1].coverage, 0.75);
    EXPECT_DOUBLE_EQ(curve[1].accuracy, 2.0 / 3);
    EXPECT_DOUBLE_EQ(curve[2].accuracy, 0.5);
    EXPECT_DOUBLE_EQ(coverage_area(curve), 0.25 * 1 + 0.5 * 2.0 / 3 + 0.25 * 0.5);
    // A perfect ranking beats the reversed one; without ties the area is the mean top-k accuracy.
    const double good = coverage_area(coverage_curve({4, 3, 2, 1}, {1, 1, 0, 0}));
    const double bad = coverage_area(coverage_curve({1, 2, 3, 4}, {1, 1, 0, 0}));
    EXPECT_DOUBLE_EQ(good, (1 + 1 + 2.0 / 3 + 0.5) / 4);
    EXPECT_GT(good, bad);
    EXPECT_TRUE(std::isnan(coverage_area({})));
    EXPECT_TRUE(answers(0.7, 0.7));
    EXPECT_FALSE(answers(NAN, 0.0));
}

}  // namespace
