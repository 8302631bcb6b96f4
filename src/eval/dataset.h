// Datasets as configuration (shared/data/DATA.md): a small JSON file says which JSONL holds the questions,
// which fields hold the question, the answer and the id, how to turn the answer field into a reference,
// the prompt and the matcher. A new JSONL set of the same shape needs a config file, not code.
//
// Config fields ("file" is relative to the config's own directory):
//   name             string, required
//   file             string, required
//   question_field   string, required
//   answer_field     string, required
//   reference        "as_is" (default) | "after_hashes" (the text after the last "####", as in GSM8K)
//   prompt_template  string, required; every "{question}" is replaced by the question; other text is literal
//   system           string, optional system message (default: none)
//   matcher          "number_after_answer" | "boxed" | "choice_letter", required
//   max_tokens       int > 0, optional (default 512): the generation budget this dataset expects
//   id_field         string, optional (default "id"); a row without it has an empty id
//   group_field      string, optional: a field every row must have (e.g. "difficulty") that reports break
//                    results down by
//   hybrid           object, optional: how `router label|eval` makes a model without a thinking template
//                    hybrid by its prompt (methods/fast_slow.h, PromptedHybrid): {"fast", "slow", "close",
//                    "marker"}, strings; fast and slow are appended to the generation prompt to commit the
//                    answer to a mode, close ends the reasoning early, the marker's appearance ends it
// Unknown fields are errors, so a typo does not silently fall back to a default.
#pragma once

#include <string>
#include <vector>

#include "eval/matchers.h"

namespace kvlens {

enum class ReferenceRule { AsIs, AfterHashes };

struct DatasetConfig {
    std::string name;
    std::string config_path;  // the JSON file this came from
    std::string file;         // the JSONL, resolved against the config's directory
    std::string question_field;
    std::string answer_field;
    std::string id_field = "id";
    std::string group_field;  // empty: none
    ReferenceRule reference = ReferenceRule::AsIs;
    std::string prompt_template;
    std::string system;
    MatcherKind matcher = MatcherKind::NumberAfterAnswer;
    int max_tokens = 512;
    // "hybrid" (empty close: none): fast/slow texts, the close and the marker, as the config gives them.
    struct Hybrid {
        std::string fast, slow, close, marker;
    } hybrid;
};

struct Sample {
    int index = 0;   // 0-based line number in the JSONL (blank lines count, so it matches `sed -n`)
    std::string id;  // the id field as text ("17" for a number), empty if absent
    std::string question;
    std::string group;  // the group_field's value as text, empty without one
    std::string reference;
    std::string prompt;  // prompt_template with the question filled in
};

// name_or_path ending in ".json": that file. Otherwise a built-in name: builtin_dir/<name>.json; an unknown
// name -> kvlens::Error listing the built-in names.
DatasetConfig load_dataset_config(const std::string& name_or_path, const std::string& builtin_dir);

// Parses a config from JSON text; `origin` names it in errors and is the base for a relative "file".
DatasetConfig parse_dataset_config(const std::string& json_text, const std::string& origin);

// The names of the configs in builtin_dir (sorted).
std::vector<std::string> builtin_dataset_names(const std::string& builtin_dir);

// The first `limit` samples (limit <= 0: all). A malformed line or a missing / non-scalar field ->
// kvlens::Error naming the file and the 1-based line. String fields are used as they are; numbers are
// written as JSON writes them ("18", "2.5").
std::vector<Sample> load_samples(const DatasetConfig& config, int limit = 0);

// The prompt for one question.
std::string apply_prompt_template(const std::string& tmpl, const std::string& question);

// The reference answer from an answer field's text.
std::string extract_reference(ReferenceRule rule, const std::string& answer);

}  // namespace kvlens
