// Development/test split by question id: tune on the development part (thresholds, length fits, layer
// choices), report on the test part.
//
// The part depends only on the id: the 64-bit FNV-1a hash of its bytes, dev iff (hash % 10000) <
// dev_fraction * 10000. So a sample stays in its part whatever the sample limit, the order of the dataset or
// the platform, and runs with different limits agree on every sample they share. The realised dev fraction
// only approaches dev_fraction as the number of ids grows (within a few points on 1000 ids).
#pragma once

#include <cstdint>
#include <string>

namespace kvlens {

enum class Part { Dev, Test };

// 64-bit FNV-1a of the id's bytes (offset basis 14695981039346656037, prime 1099511628211).
uint64_t split_hash(const std::string& id);

// Throws kvlens::Error for an empty id (a missing id would put every such sample in one part) and for a
// dev_fraction outside [0, 1].
Part split_part(const std::string& id, double dev_fraction = 0.3);

// "dev" / "test".
const char* part_name(Part part);

}  // namespace kvlens
