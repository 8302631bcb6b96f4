// Sharding an evaluation over several machines: `--shard I/N` keeps the samples whose id hashes to shard I,
// and `kvlens eval merge` joins the N output directories into the run one machine would have written.
//
// Which shard a sample is in depends only on its id (the line number as text when the id is empty):
// shard = fmix64(FNV-1a(id)) % N, fmix64 being MurmurHash3's 64-bit finaliser. The finaliser mixes every bit
// of the hash into the low ones, so the shard is independent of the development/test part (eval/split.h:
// FNV-1a % 10000 < 3000). A plain FNV-1a % N would not be for N sharing factors with 10000 (with N = 5000,
// shards 3000..4999 would hold test questions only). A sample keeps its shard whatever the limit, the order
// of the dataset or the platform.
//
// The samples of a run are chosen first (--limit, eval sample's --part), then sharded: the N shards of a
// run partition exactly the samples the one-machine run would evaluate.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/dataset.h"

namespace kvlens {

struct ShardSpec {
    int index = 0;  // I in 0..count-1
    int count = 0;  // N; 0: not sharded
    bool active() const { return count > 0; }
};

// "I/N" with 0 <= I < N <= 100000; "" is no sharding. Throws Error naming --shard otherwise.
ShardSpec parse_shard(const std::string& text);
std::string to_string(const ShardSpec& spec);  // "I/N"

// The shard (0..count-1) of a sample id; the key is the id, or the line number as text when it is empty.
int shard_of(const std::string& id, int count);
std::string shard_key(const Sample& s);

// The samples of one shard, in their order; all of them when the spec is not active.
std::vector<Sample> select_shard(const std::vector<Sample>& samples, const ShardSpec& spec);

// What a shard's run.json records beside the identity's "shard": the spec and the indices of every sample
// of the whole (unsharded) run, so that a merge can check that none is missing.
nlohmann::json shard_run_info(const ShardSpec& spec, const std::vector<Sample>& all_samples);

}  // namespace kvlens
