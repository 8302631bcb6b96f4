// eval coe's relabelling (--rescore): labels follow the current matcher's reading of the stored outputs.
#include "eval/coe_eval.h"

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

TEST(CoeEval, RelabelRecordsReadsStoredOutputsAgain) {
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

}  // namespace
}  // namespace kvlens
