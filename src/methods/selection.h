// Choosing one answer among N samples of the same question, and abstaining (method.md section 5).
//
// A candidate is one sample: its extracted answer (empty: none could be extracted) and a score, where higher
// means "more likely correct" (a raw score whose relation is reversed must be negated, or calibrated, first:
// see calibration.h). Strategies:
//   First         sample 0 (what plain sampling gives).
//   BestOfN       the candidate with the highest score.
//   Majority      the answer extracted most often (self-consistency); the score is ignored.
//   WeightedVote  the answer with the largest sum of scores over the samples that gave it. Weights must be
//                 >= 0 (use calibrated probabilities); a negative or NaN weight is an error.
// Rules, the same for every strategy:
//   - Samples without an answer are never chosen while some sample has one (they cannot vote, and best-of-N
//     would pick an empty answer only by the score's mistake). If none has an answer, First's rule applies.
//   - NaN scores rank below every number in BestOfN.
//   - Ties: the lowest sample index wins. For votes, the tied answer whose first occurrence comes first wins,
//     and the chosen sample is that first occurrence.
// Confidence of a choice (what abstention thresholds): First and BestOfN: the chosen sample's score;
// Majority: the winning answer's vote share (votes / N); WeightedVote: its weight share (weight / total
// weight over answered samples; 0 when that total is 0).
#pragma once

#include <string>
#include <vector>

namespace kvlens {

enum class Strategy { First, BestOfN, Majority, WeightedVote };
Strategy parse_strategy(const std::string& s);  // "first" | "best" | "majority" | "weighted"; else Error
const char* to_string(Strategy s);

struct Candidate {
    std::string answer;  // extracted answer; empty = none
    double score = 0;
};

struct Choice {
    int index = 0;  // the chosen sample
    std::string answer;
    double confidence = 0;
    int votes = 0;  // samples that gave the chosen answer
};

// Throws Error on an empty candidate list, or a bad weight for WeightedVote.
Choice select_answer(Strategy s, const std::vector<Candidate>& c);

// Answer only when confidence >= threshold (a NaN confidence never answers).
inline bool answers(double confidence, double threshold) {
    return confidence >= threshold;
}

// Selective answering: questions sorted by the confidence of their choice, most confident first; answering
// the top k gives coverage k/n and the accuracy of those k. One point per distinct confidence (tied questions
// are answered or skipped together), ordered by coverage.
struct CoveragePoint {
    double threshold, coverage, accuracy;
};
std::vector<CoveragePoint> coverage_curve(const std::vector<double>& confidence,
                                          const std::vector<int>& correct);
// Area under the accuracy-coverage curve: sum over points of (coverage step) x accuracy. With distinct
// confidences this is the mean over k of the top-k accuracy; a perfect ranking gives the largest value,
// a random one about the overall accuracy. NaN for no questions.
double coverage_area(const std::vector<CoveragePoint>& curve);

}  // namespace kvlens
