// Labels are the matcher's reading of the stored answers: after a matcher change, an evaluation's records can
// be labelled again from their stored outputs without decoding (`eval coe|sample --rescore`).
//
// A record is an eval coe sample ({output, reference, extracted, matched, truncated, correct}) or an eval
// sample question ({reference, samples: [{output, extracted, matched, truncated, correct}, ...]}).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/matchers.h"

namespace kvlens {

class ResultsFile;

// Recomputes extracted, matched and correct (cut answers stay wrong) of every answer in `records`; an answer
// whose reading changed keeps its first label under "relabelled_from" (dropped when a later reading is the
// first one again). Returns the number of answers changed.
int relabel_records(std::vector<nlohmann::json>& records, MatcherKind matcher);

// The answers in `records` that carry a relabelled_from.
int count_relabelled(const std::vector<nlohmann::json>& records);

// What a resumed run does with its stored labels: with `rescore`, relabel them and rewrite the file
// (ResultsFile::replace_all); without, leave them and warn on stderr when the current matcher reads any of
// them differently. `what` names the command in the messages ("eval coe").
void relabel_results(ResultsFile& results, MatcherKind matcher, bool rescore, const std::string& what,
                     const std::string& out_dir);

}  // namespace kvlens
