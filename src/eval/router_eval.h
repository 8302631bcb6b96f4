// The fast/slow router's experiments (method.md 3): label a training set by running both modes, train the
// KV classifier on the prompts' features, and evaluate always-fast / always-slow / routed / routed +
// online switching on a test set. Every step writes a resumable JSONL and a Markdown report.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "methods/router.h"

namespace kvlens {

struct RouterLabelParams {
    std::string model_path;
    std::string dataset;   // built-in name or config .json
    std::string data_dir;  // built-in configs
    std::string out_dir;   // labels.jsonl, run.json, report.md
    std::string chat_template = "auto";
    std::string preset = "32/8";  // feature window: seq_len/n_layers
    int limit = 0;                // first N questions (0: all); chosen before the shard
    std::string shard;            // "I/N": only the questions of shard I of N (eval/shard.h); "": all
    // dev / test: only that part of the split by id (eval/split.h; train on dev, report on test); all
    std::string part = "all";
    double dev_fraction = 0.3;
    int max_tokens = 0;       // per mode (0: the dataset's)
    int long_tokens = 128;    // a fast answer this long counts as slow (label 25)
    int windows = 0;          // also label windows every N sampled tokens along both answers (0: off)
    int cut_max_tokens = 64;  // answer budget of the cut probe (windows inside the think block)
    int n_ctx = 0;            // 0: longest prompt + max_tokens + margin
    int n_threads = 0;
    std::string kv_source = "cache";
    std::string command_line;
};
// Runs fast and slow mode (greedy) on every question, stores both outputs, their token counts, the label
// and the prompt's router features; the report tabulates accuracy and tokens per mode and per group.
void run_router_label(const RouterLabelParams& p);
// report.md of a label run from its records (dataset order) and run.json: the run's own, or eval merge's of
// the shards (eval/merge.h).
void write_router_label_report(const std::string& out_dir, const std::vector<nlohmann::json>& records,
                               const nlohmann::json& run_info);

struct RouterTrainCliParams {
    std::vector<std::string> label_dirs;  // outputs of run_router_label for one model
    std::string out_path;                 // the router file
    std::string preset = "tuned";         // "paper" or "tuned"
    std::string windows = "prompt";       // train on: "prompt" (method.md) or "all" (prompts + windows)
    RouterTrainParams train;              // overrides applied on top of the preset by the caller
    std::string command_line;
};
// Trains the classifier on the labelled prompts; writes the router file and <out_path>.md (report).
void run_router_train(const RouterTrainCliParams& p);

struct RouterEvalParams {
    std::string model_path, router_path, dataset, data_dir, out_dir;
    std::string chat_template = "auto";
    RoutePolicy policy;
    int limit = 0, max_tokens = 0, n_ctx = 0, n_threads = 0;
    std::string shard;  // "I/N": only the questions of shard I of N (eval/shard.h), chosen after --limit
    std::string part = "all";  // dev / test / all, as in RouterLabelParams
    double dev_fraction = 0.3;
    std::string kv_source = "cache";
    int long_tokens = 128;
    // The training-free peers, a row each: thinking budgets (think tokens) and DEER exit thresholds, with
    // the tokens a DEER trial may take.
    std::vector<int> budgets;
    std::vector<float> deer_thresholds;
    int deer_trial_tokens = 32;
    std::string command_line;
};
// always-fast, always-slow, routed and routed + switching (and budget:N, deer:T) on every question:
// eval.jsonl, report.md (table per mode and per group, the classifier's MSE and confusion at 50 against the
// labels the two fixed modes give), accuracy-vs-tokens.svg.
void run_router_eval(const RouterEvalParams& p);
// report.md and accuracy-vs-tokens.svg of an eval run from its records and run.json (as above).
void write_router_eval_report(const std::string& out_dir, const std::vector<nlohmann::json>& records,
                              const nlohmann::json& run_info);

}  // namespace kvlens
