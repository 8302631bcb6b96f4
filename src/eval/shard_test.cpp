// The shard assignment against values computed independently (Python: FNV-1a, then MurmurHash3's fmix64)
// and against its contract: the shards of a run partition its samples, whatever the limit, and the shard is
// independent of the development/test part.
#include "eval/shard.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "eval/split.h"
#include "util/error.h"

namespace kvlens {
namespace {

TEST(Shard, PinnedAssignments) {
    struct Pinned {
        const char* id;
        int mod2, mod3, mod7;
    };
    const Pinned pinned[] = {{"a", 1, 2, 1}, {"foobar", 1, 1, 3}, {"gsm8k/0", 0, 0, 1}, {"q0", 1, 1, 6}};
    for (const Pinned& p : pinned) {
        EXPECT_EQ(shard_of(p.id, 2), p.mod2) << p.id;
        EXPECT_EQ(shard_of(p.id, 3), p.mod3) << p.id;
        EXPECT_EQ(shard_of(p.id, 7), p.mod7) << p.id;
        EXPECT_EQ(shard_of(p.id, 1), 0);
    }
}

TEST(Shard, ParseAndPrint) {
    EXPECT_FALSE(parse_shard("").active());
    const ShardSpec s = parse_shard("2/3");
    EXPECT_EQ(s.index, 2);
    EXPECT_EQ(s.count, 3);
    EXPECT_EQ(to_string(s), "2/3");
    EXPECT_EQ(to_string(parse_shard("0/1")), "0/1");
    for (const char* bad : {"3/3", "1", "a/2", "-1/2", "1/0", "1/", "/2", "0/2/3", " 0/2", "0/1000000"}) {
        try {
            parse_shard(bad);
            ADD_FAILURE() << "accepted '" << bad << "'";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("--shard"), std::string::npos) << e.what();
        }
    }
}

TEST(Shard, ShardsPartitionTheSamples) {
    std::vector<Sample> samples;
    for (int i = 0; i < 200; ++i) samples.push_back({i, i % 50 == 7 ? "" : "id" + std::to_string(i)});
    for (int n : {1, 2, 3, 5}) {
        std::vector<int> seen(samples.size(), 0);
        for (int i = 0; i < n; ++i) {
            int prev = -1;
            for (const Sample& s : select_shard(samples, {i, n})) {
                EXPECT_GT(s.index, prev) << "order kept";
                prev = s.index;
                ++seen[s.index];
            }
        }
        for (int c : seen) EXPECT_EQ(c, 1) << "n " << n;
    }
    // An empty id falls back to the line number, as the report's split does.
    EXPECT_EQ(shard_key(samples[7]), "7");
    EXPECT_EQ(shard_key(samples[8]), "id8");
}

TEST(Shard, IndependentOfTheDevTestPart) {
    // Every shard holds about the dev fraction of development questions.
    const int n_ids = 4000;
    for (int n : {2, 4}) {
        std::vector<int> dev(n, 0), all(n, 0);
        for (int i = 0; i < n_ids; ++i) {
            const std::string id = "q" + std::to_string(i);
            const int s = shard_of(id, n);
            ++all[s];
            dev[s] += split_part(id) == Part::Dev;
        }
        for (int s = 0; s < n; ++s) {
            EXPECT_NEAR((double)all[s] / n_ids, 1.0 / n, 0.03) << "n " << n << " shard " << s;
            EXPECT_NEAR((double)dev[s] / all[s], 0.3, 0.04) << "n " << n << " shard " << s;
        }
    }
    // With 5000 shards, a plain FNV-1a % N would put development questions (hash % 10000 < 3000) only in
    // shards below 3000: those above must still hold their share.
    int n_high = 0, dev_high = 0;
    for (int i = 0; i < 20000; ++i) {
        const std::string id = "q" + std::to_string(i);
        if (shard_of(id, 5000) < 3000) continue;
        ++n_high;
        dev_high += split_part(id) == Part::Dev;
    }
    EXPECT_NEAR((double)dev_high / n_high, 0.3, 0.03) << n_high << " ids in shards 3000..4999";
}

}  // namespace
}  // namespace kvlens
