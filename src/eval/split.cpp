#include "eval/split.h"

#include "util/error.h"

namespace kvlens {

uint64_t split_hash(const std::string& id) {
    uint64_t h = 14695981039346656037ull;
    for (char c : id) {
        h ^= (uint64_t)(unsigned char)c;  // bytes, not (possibly signed) chars: the same hash everywhere
        h *= 1099511628211ull;
    }
    return h;
}

Part split_part(const std::string& id, double dev_fraction) {
    if (!(dev_fraction >= 0.0 && dev_fraction <= 1.0)) {
        throw Error("split: dev_fraction must be in [0, 1], got " + std::to_string(dev_fraction));
    }
    if (id.empty()) throw Error("split: empty sample id");
    return (double)(split_hash(id) % 10000) < dev_fraction * 10000.0 ? Part::Dev : Part::Test;
}

const char* part_name(Part part) {
    return part == Part::Dev ? "dev" : "test";
}

}  // namespace kvlens
