#include "eval/shard.h"

#include "eval/split.h"
#include "util/error.h"

namespace kvlens {

ShardSpec parse_shard(const std::string& text) {
    if (text.empty()) return {};
    const auto bad = [&](const std::string& why) {
        return Error("--shard '" + text + "': " + why + " (expected I/N with 0 <= I < N, e.g. 0/4)");
    };
    const size_t slash = text.find('/');
    if (slash == std::string::npos) throw bad("no '/'");
    const auto number = [&](const std::string& s) {
        if (s.empty() || s.size() > 6 || s.find_first_not_of("0123456789") != std::string::npos)
            throw bad("'" + s + "' is not a number");
        return std::stoi(s);
    };
    ShardSpec spec{number(text.substr(0, slash)), number(text.substr(slash + 1))};
    if (spec.count < 1 || spec.count > 100000) throw bad("N must be in 1..100000");
    if (spec.index >= spec.count) throw bad("I must be below N");
    return spec;
}

std::string to_string(const ShardSpec& spec) {
    return std::to_string(spec.index) + "/" + std::to_string(spec.count);
}

int shard_of(const std::string& id, int count) {
    if (count < 1) throw Error("shard_of: count must be >= 1");
    uint64_t h = split_hash(id);
    // MurmurHash3's fmix64.
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (int)(h % (uint64_t)count);
}

std::string shard_key(const Sample& s) {
    return s.id.empty() ? std::to_string(s.index) : s.id;
}

std::vector<Sample> select_shard(const std::vector<Sample>& samples, const ShardSpec& spec) {
    if (!spec.active()) return samples;
    std::vector<Sample> out;
    for (const Sample& s : samples)
        if (shard_of(shard_key(s), spec.count) == spec.index) out.push_back(s);
    return out;
}

nlohmann::json shard_run_info(const ShardSpec& spec, const std::vector<Sample>& all_samples) {
    std::vector<int> indices;
    for (const Sample& s : all_samples) indices.push_back(s.index);
    return {{"index", spec.index}, {"count", spec.count}, {"all_indices", indices}};
}

}  // namespace kvlens
