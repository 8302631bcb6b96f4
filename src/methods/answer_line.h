// Confidence of the line that states the answer: the model's own probabilities of the tokens of the last
// line of its output that holds any text ("Answer: C", "\boxed{42}", "Therefore, the answer is: B.").
//
// Why beside KV-CoE and the whole-answer baselines: those average over the reasoning. On multiple-choice
// questions (CommonsenseQA, docs/results) a wrong answer is argued as fluently as a right one and every
// whole-answer score is at chance; the doubt, if the model has any, sits at the answer itself. The line's
// template tokens ("the answer is") are near-certain, so the lowest probability on the line is, in practice,
// that of the answer token(s), and the geometric mean follows it too.
#pragma once

#include <string>
#include <vector>

#include "engine/generate.h"

namespace kvlens {

struct AnswerLineScores {
    double prob;      // geometric mean of the line's token probabilities (0 without a line: no answer)
    double min_prob;  // the lowest of them (0 without a line)
    int n_tokens;     // tokens that overlap the line (0: the output has no non-space text)
};

// pieces[i]: the bytes of output token i (an end-of-generation token's piece is empty); steps[i].prob: its
// probability when it was chosen. A token counts when any of its bytes lies on the line, which runs from
// after the last '\n' before the output's last non-space byte to that byte. Throws Error when the sizes
// differ.
AnswerLineScores answer_line_scores(const std::vector<std::string>& pieces,
                                    const std::vector<StepStats>& steps);

}  // namespace kvlens
