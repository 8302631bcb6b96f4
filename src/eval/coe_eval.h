// KV-CoE evaluation (method.md section 2, step 5): generate an answer for every sample of a dataset, score
// it with KV-CoE, hidden-state CoE and the output-probability baselines from the same generation, label it
// with the dataset's matcher, and report how well each score separates correct from incorrect answers.
//
// Output directory:
//   samples.jsonl  one line per sample (resumable: a rerun skips what is done, never writes a sample twice)
//   run.json       what produced it (model, dataset, settings); a rerun with other settings is refused
//   report.md      table per score (AUROC with bootstrap 95% CI, AUPR, FPR95), accuracy, truncations
//   roc.svg, layers-kv.svg, layers-hs.svg   ROC curves; mean magnitude / angle per layer step
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/chat_template.h"
#include "eval/dataset.h"

namespace kvlens {

struct CoeEvalParams {
    std::string model_path;
    std::string dataset;   // built-in name or config path
    std::string data_dir;  // where built-in configs live
    std::string out_dir;
    int limit = 0;       // 0: all samples
    int max_tokens = 0;  // 0: the dataset config's
    int parallel = 4;    // sequences decoded together
    int n_ctx = 0;       // 0: enough for `parallel` sequences of the longest prompt + max_tokens
    int n_threads = 0;
    std::string kv_source =
        "graph";  // where K/V come from (kv_capture.h); "cache" is part of the run identity
    std::string chat_template = "auto";
    std::string think = "default";
    int bootstrap = 1000;
    uint64_t seed = 0;
    std::string command_line;  // recorded in the report
};

// Runs (or resumes) the evaluation and writes the report. Throws Error on bad input.
void run_coe_eval(const CoeEvalParams& p);

// Scores in report order: KV-CoE (kv_cat, k, v), hidden-state CoE, output baselines.
const std::vector<std::string>& coe_report_scores();

// Writes report.md and the SVG plots from the records of samples.jsonl.
void write_coe_report(const std::string& out_dir, const std::vector<nlohmann::json>& records,
                      const nlohmann::json& run_info, int bootstrap, uint64_t seed);

}  // namespace kvlens
