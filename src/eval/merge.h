// kvlens eval merge: joins the output directories of one evaluation's shards (--shard I/N, eval/shard.h)
// into the directory a one-machine run would have written: samples.jsonl in dataset order, run.json with the
// identity of the unsharded run, and the report written by the same writer from the merged records (every
// metric on all samples, never an average of the shards').
//
// Nothing is written unless every check passes: each directory is a shard of the same evaluation (identity
// equal apart from "shard", the same report settings and the same set of samples, i.e. --limit / --part),
// each of 0..N-1 is there exactly once, no sample is in two directories or in a shard it does not hash to,
// and every sample of the run is present. The output directory must be new or empty.
#pragma once

#include <string>
#include <vector>

namespace kvlens {

struct MergeParams {
    std::vector<std::string> dirs;  // the shards' output directories, in any order
    std::string out_dir;
    std::string command_line;  // recorded in run.json and the report
};

// Throws Error naming the directory and the problem.
void run_eval_merge(const MergeParams& p);

}  // namespace kvlens
