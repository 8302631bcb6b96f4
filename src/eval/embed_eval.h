// kvlens eval embed: the KV embedding against baselines on classification tasks (MTEB-style linear probe).
//
// A task is a small JSON config (data/embed_tasks/*.json):
//   {"name": "math500-subject", "folds": 5, "seed": 0,
//    "sources": [{"file": "../math500_test.jsonl", "text_field": "problem", "label_field": "subject",
//                 "limit": 0}]}
// Each source reads a JSONL file (relative paths from the config's directory). Per source: the text is
// `text_field`, or with `text_fields` (a list) every listed field of a row gives its own text; the label is
// `label_field`'s value, or the fixed `label`, or (with text_fields and neither) the field's name. `limit`
// keeps the first N rows of the file (0: all). Classes are the distinct labels, sorted.
//
// Outputs in the output directory: texts.jsonl (the distinct texts of all tasks, in order: the rows of every
// .npy), kv.npy and hidden.npy (the embeddings computed), results.json, report.md and run.json (settings).
//
// With --shard I/N a run embeds only the texts of shard I (a text is its own id: eval/shard.h hashes it) and
// writes their rows to samples.jsonl (resumable) beside run.json, no report: the probe is a k-fold CV over
// every text, so only `kvlens eval merge` of all N shards computes it, from the joined rows, with the code a
// one-machine run uses.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "eval/probe.h"

namespace kvlens {

struct EmbedTask {
    std::string name, origin;
    int folds = 5;
    uint64_t seed = 0;
    std::vector<std::string> texts;
    std::vector<int> labels;           // ids into classes
    std::vector<std::string> classes;  // sorted
};

EmbedTask load_embed_task(const std::string& config_path);
EmbedTask parse_embed_task(const std::string& json_text, const std::string& origin,
                           const std::string& base_dir);

// A float32 2-D .npy file (C order, little-endian). Throws Error naming the path.
Matrix read_npy_matrix(const std::string& path);

struct EmbedEvalParams {
    std::string model_path;
    std::vector<std::string> tasks;  // config paths
    std::string out_dir;
    std::vector<std::pair<std::string, std::string>>
        extras;               // representation name, .npy path (rows = texts.jsonl)
    bool texts_only = false;  // write texts.jsonl and stop (for computing extra representations first)
    bool hidden = true, random = true;
    int batch_seqs = 8, n_ctx = 4096, n_threads = 0;
    std::string kv_source = "cache";  // where K/V come from (kv_capture.h); recorded in results.json
    int timing_texts = 100;           // time each representation alone on the first N texts (0: no timing)
    ProbeParams probe;
    std::string shard;  // "I/N": embed only the texts of shard I of N (eval/shard.h); "": all
    std::string command_line;
};

void run_embed_eval(const EmbedEvalParams& p);

// eval merge's part for the shards of an eval embed run (eval/merge.h): `records` are the shards' rows in
// texts.jsonl order, `run_info` the run.json of the unsharded run, `shard_infos` every shard's run.json.
// Writes texts.jsonl, kv.npy, hidden.npy, results.json and report.md as one machine does; the timing is the
// shards' summed (stored in run_info).
void write_embed_merge(const std::string& out_dir, const std::vector<nlohmann::json>& records,
                       nlohmann::json& run_info, const std::vector<nlohmann::json>& shard_infos);

}  // namespace kvlens
