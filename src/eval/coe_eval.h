// KV-CoE evaluation (method.md section 2, step 5): generate an answer for every sample of a dataset, score
// it with KV-CoE, hidden-state CoE and the output-probability baselines from the same generation, label it
// with the dataset's matcher, and report how well each score separates correct from incorrect answers.
//
// Output directory:
//   samples.jsonl  one line per sample (resumable: a rerun skips what is done, never writes a sample twice)
//   run.json       what produced it (model, dataset, settings); a rerun with other settings is refused
//   report.md      test-part table per score (AUROC with bootstrap 95% CI, AUPR, FPR95, PRR,
//   length-controlled
//                  AUROCs), the configuration chosen on the development part, verdicts, accuracy, truncations
//   roc.svg, layers-kv.svg, layers-hs.svg   ROC curves; mean magnitude / angle per layer step
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/chat_template.h"
#include "eval/dataset.h"
#include "methods/coe.h"

namespace kvlens {

struct CoeEvalParams {
    std::string model_path;
    std::string dataset;   // built-in name or config path
    std::string data_dir;  // where built-in configs live
    std::string out_dir;
    int limit = 0;       // 0: all samples; chosen before sharding
    std::string shard;   // "I/N": only the samples of shard I of N (eval/shard.h); "": all
    int max_tokens = 0;  // 0: the dataset config's
    int parallel = 4;    // sequences decoded together
    int n_ctx = 0;       // 0: enough for `parallel` sequences of the longest prompt + max_tokens
    int n_threads = 0;
    std::string kv_source =
        "cache";  // where K/V come from (kv_capture.h); "graph" (the old default) is part of the run identity
    bool batch_invariant = false;  // SessionParams::batch_invariant; part of the run identity when set
    std::string chat_template = "auto";
    std::string think = "default";
    TokenCoeSpec token_coe;  // the configuration of kv_coe_* (a grid of others is scored beside it)
    int bootstrap = 1000;
    uint64_t seed = 0;
    double dev_fraction = 0.3;  // questions (by id hash) in the development part; the rest is the test part
    std::string command_line;   // recorded in the report
    bool rescore = false;       // relabel the stored answers with the current matcher (eval/relabel.h)
    // Score the stored answers again from their tokens, each in one teacher-forced pass (score_forced),
    // with this run's kv_source and token_coe, which may differ from the stored run's (nothing else may);
    // the answers and labels stay. The run then continues with these settings.
    bool recompute_scores = false;
};

// Runs (or resumes) the evaluation and writes the report. Throws Error on bad input.
void run_coe_eval(const CoeEvalParams& p);

// The token-axis configurations every run scores beside kv_coe_* ("token_grid" in samples.jsonl, key
// token_grid_key(): "layers|kv_part|positions|head_agg"), so that a development part can choose one.
std::vector<TokenCoeSpec> token_coe_grid(int n_layer);
std::string token_grid_key(const TokenCoeSpec& spec);

// Scores in report order: KV-CoE (kv_cat, k, v), hidden-state CoE, output baselines.
const std::vector<std::string>& coe_report_scores();

// The free signals the report's combined confidence (a logistic model fitted on the development part) uses.
const std::vector<std::string>& combined_features();

// Writes report.md, summary.json and the SVG plots from the records of samples.jsonl: the development part
// (split_part(id, dev_fraction)) chooses the token-axis configuration and fits the combined model and the
// length regressions; every reported metric is on the test part.
void write_coe_report(const std::string& out_dir, const std::vector<nlohmann::json>& records,
                      const nlohmann::json& run_info, int bootstrap, uint64_t seed,
                      double dev_fraction = 0.3);

}  // namespace kvlens
