// Relabelling (eval coe|sample --rescore): labels follow the current matcher's reading of the stored outputs.
#include "eval/relabel.h"

#include <gtest/gtest.h>

#include <vector>

namespace kvlens {
namespace {

using nlohmann::json;

json record(const char* output, const char* reference, const char* extracted, bool matched, bool truncated) {
    return {{"index", 0},
            {"output", output},
            {"reference", reference},
            {"extracted", extracted},
            {"matched", matched},
            {"truncated", truncated},
            {"correct", matched && !truncated}};
}

TEST(Relabel, CoeRecordsAreReadAgainFromTheirOutputs) {
    std::vector<json> rs = {
        // An older choice_letter saw nothing in "the answer is: C"; today's matcher reads C.
        record("Therefore, the answer is: C", "C", "", false, false),
        // The same, but the answer was cut by the token limit: matched, still wrong.
        record("Therefore, the answer is: C", "C", "", false, true),
        // Already read as today: untouched.
        record("Answer: B", "A", "B", false, false),
    };
    EXPECT_EQ(relabel_records(rs, MatcherKind::ChoiceLetter), 2);
    EXPECT_EQ(rs[0]["extracted"], "C");
    EXPECT_TRUE(rs[0]["matched"].get<bool>());
    EXPECT_TRUE(rs[0]["correct"].get<bool>());
    EXPECT_EQ(rs[0]["relabelled_from"], (json{{"extracted", ""}, {"matched", false}, {"correct", false}}));
    EXPECT_TRUE(rs[1]["matched"].get<bool>());
    EXPECT_FALSE(rs[1]["correct"].get<bool>());
    EXPECT_FALSE(rs[2].contains("relabelled_from"));
    // Relabelling is idempotent, and the first label survives a second change.
    EXPECT_EQ(relabel_records(rs, MatcherKind::ChoiceLetter), 0);
    rs[0]["output"] = "Answer: D";
    EXPECT_EQ(relabel_records(rs, MatcherKind::ChoiceLetter), 1);
    EXPECT_EQ(rs[0]["extracted"], "D");
    EXPECT_EQ(rs[0]["relabelled_from"]["extracted"], "");
    // Back at the first reading, the note goes.
    rs[0]["output"] = "no letter at all";
    EXPECT_EQ(relabel_records(rs, MatcherKind::ChoiceLetter), 1);
    EXPECT_FALSE(rs[0].contains("relabelled_from"));
    EXPECT_FALSE(rs[0]["correct"].get<bool>());
}

TEST(Relabel, SampleRecordsRelabelEveryAnswerOfAQuestion) {
    json q = {{"index", 0}, {"reference", "C"}, {"samples", json::array()}};
    q["samples"].push_back(record("Therefore, the answer is: C", "C", "", false, false));
    q["samples"].push_back(record("Answer: A", "C", "A", false, false));
    q["samples"].push_back(record("Therefore, the answer is: B", "C", "", false, false));
    for (json& a : q["samples"]) a.erase("reference");  // eval sample keeps it once, on the question
    std::vector<json> rs = {q};
    EXPECT_EQ(relabel_records(rs, MatcherKind::ChoiceLetter), 2);
    EXPECT_EQ(count_relabelled(rs), 2);
    const json& s = rs[0]["samples"];
    EXPECT_TRUE(s[0]["correct"].get<bool>());
    EXPECT_FALSE(s[1].contains("relabelled_from"));
    EXPECT_EQ(s[2]["extracted"], "B");
    EXPECT_FALSE(s[2]["correct"].get<bool>());
}

}  // namespace
}  // namespace kvlens
