// The split against hashes and parts computed independently (Python, the FNV-1a definition) and against its
// contract: the part depends on the id alone, and the dev fraction is near the target.
#include "eval/split.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>

#include "util/error.h"

namespace kvlens {
namespace {

TEST(Split, PinnedHashesAndParts) {
    // "a" and "foobar" are the published FNV-1a 64 test vectors; "\xc3\xa9" (UTF-8 e-acute) has bytes >=
    // 0x80, which a signed char would hash differently.
    struct Pinned {
        const char* id;
        uint64_t hash;
        Part part;  // at the default dev_fraction 0.3 (hash % 10000 < 3000)
    };
    const Pinned pinned[] = {
        {"a", 0xaf63dc4c8601ec8cull, Part::Dev},             // % 10000 == 1996
        {"foobar", 0x85944171f73967e8ull, Part::Test},       // 6968
        {"gsm8k/0", 0xb21f37c00f00debcull, Part::Test},      // 6716
        {"theoremqa-42", 0xc88012b00a24afc2ull, Part::Dev},  // 1682
        {"\xc3\xa9", 0x0ac21707b7181e01ull, Part::Test},     // 7617
        {"q4743", 0x814fd4f514d08b08ull, Part::Test},        // 3000 exactly: the bound is strict
    };
    for (const Pinned& p : pinned) {
        SCOPED_TRACE(p.id);
        EXPECT_EQ(split_hash(p.id), p.hash);
        EXPECT_EQ(split_part(p.id), p.part);
    }
    EXPECT_EQ(split_hash(""), 14695981039346656037ull);  // the offset basis
    EXPECT_EQ(split_part("q4743", 0.3001), Part::Dev);
    EXPECT_EQ(split_part("gsm8k/2", 0.3), Part::Test);  // 3138
    EXPECT_EQ(split_part("gsm8k/2", 0.32), Part::Dev);
    EXPECT_STREQ(part_name(Part::Dev), "dev");
    EXPECT_STREQ(part_name(Part::Test), "test");
}

TEST(Split, ExtremeFractions) {
    for (int i = 0; i < 200; ++i) {
        const std::string id = "id-" + std::to_string(i);
        EXPECT_EQ(split_part(id, 0.0), Part::Test);
        EXPECT_EQ(split_part(id, 1.0), Part::Dev);
    }
}

// Dev grows with the fraction: a sample in dev at 0.2 is in dev at 0.3 (the threshold moves, the hash
// does not).
TEST(Split, NestedInTheFraction) {
    for (int i = 0; i < 1000; ++i) {
        const std::string id = "gsm8k/" + std::to_string(i);
        if (split_part(id, 0.2) == Part::Dev) {
            EXPECT_EQ(split_part(id, 0.3), Part::Dev);
        }
    }
}

TEST(Split, DevFractionNearTarget) {
    // Dataset-like id patterns: prefix + index + suffix.
    const std::pair<const char*, const char*> patterns[] = {
        {"q", ""}, {"gsm8k/", ""}, {"math500/test/", ".json"}, {"", ""}};
    for (const auto& [prefix, suffix] : patterns) {
        for (double target : {0.1, 0.3, 0.5, 0.9}) {
            int dev = 0;
            for (int i = 0; i < 1000; ++i) {
                dev += split_part(prefix + std::to_string(i) + suffix, target) == Part::Dev;
            }
            SCOPED_TRACE(std::string(prefix) + "N" + suffix + " target " + std::to_string(target));
            EXPECT_NEAR(dev / 1000.0, target, 0.03);
        }
    }
}

TEST(Split, BadInputThrows) {
    EXPECT_THROW(split_part("", 0.3), Error);
    EXPECT_THROW(split_part("a", -0.1), Error);
    EXPECT_THROW(split_part("a", 1.5), Error);
    EXPECT_THROW(split_part("a", NAN), Error);
    try {
        split_part("a", 2.0);
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "split: dev_fraction must be in [0, 1], got 2.000000");
    }
}

}  // namespace
}  // namespace kvlens
