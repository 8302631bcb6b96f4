// Sampling evaluation (method.md section 5): for every question of a dataset, N_max = max(ns) temperature
// samples decoded together (methods/sampling.h), each labelled by the dataset's matcher and scored; then,
// for each N in ns, the first N samples of every question are given to every selection strategy.
//
// Strategies per N: first sample; majority vote; oracle (any of the N correct: an upper bound); and per
// selection score s: best-of-N by the raw score (the paper's "higher = more correct" convention), best-of-N
// by the calibrated score, and a vote weighted by the calibrated probability. Calibrated scores are
// cross-fitted: questions are split in two folds (even / odd position), and each fold is scored by a
// calibration fitted on all samples of the other fold, so the direction of a score (KV-CoE is reversed on
// SmolLM2) is learned without looking at the question being scored.
//
// Output directory:
//   samples.jsonl   one line per question with all N_max samples (resumable, like eval coe)
//   run.json        what produced it; a rerun with other generation settings is refused
//   report.md       strategy accuracy table, selective-answering areas, calibration directions
//   summary.json    the same numbers
//   accuracy-vs-n.svg, coverage-n<N>.svg   accuracy per strategy vs N; accuracy vs coverage per N
//   calibration.<score>.json   each score's calibration fitted on all questions (for kvlens sample)
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "methods/coe.h"

namespace kvlens {

struct SampleEvalParams {
    std::string model_path;
    std::string dataset, data_dir, out_dir;
    int limit = 0;              // first N questions of the selected part (0: all), before sharding
    std::string shard;          // "I/N": only the questions of shard I of N (eval/shard.h); "": all
    std::string part = "all";   // all | dev | test: questions of that part of eval/split.h's split
    double dev_fraction = 0.3;  // the split's, as in eval coe
    int max_tokens = 0;         // 0: the dataset config's
    std::vector<int> ns = {1, 4, 8};
    float temperature = 0.7f;
    int top_k = 0;
    float top_p = 0.95f;
    uint32_t seed = 0;  // question at position q samples with seeds seed + q * N_max + i
    int n_ctx = 0;      // 0: N_max x (longest prompt + max tokens)
    int n_threads = 0;
    std::string kv_source =
        "cache";  // where K/V come from (kv_capture.h); "graph" (the old default) is part of the run identity
    std::string chat_template = "auto", think = "default";
    std::vector<std::string> scores = {"kv_coe_r", "kv_coe_c", "hs_coe_c", "max_prob", "inv_ppl"};
    std::string calibration = "isotonic";
    TokenCoeSpec token_coe;  // the configuration of kv_coe_*
    std::string command_line;
    bool rescore = false;  // relabel the stored answers with the current matcher (eval/relabel.h)
};

void run_sample_eval(const SampleEvalParams& p);

// Writes report.md, summary.json, the plots and the calibration files from the question records.
void write_sample_report(const std::string& out_dir, const std::vector<nlohmann::json>& records,
                         const nlohmann::json& run_info, const SampleEvalParams& p);

}  // namespace kvlens
