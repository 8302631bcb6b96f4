// The reasoner v2 (tools/reasoner/arith-reasoner-v2.gguf, issue #13): it loads as qwen3 with its chat
// template, its fast answers to fixed questions (none in its training data) are the pinned ones, and its cut
// traces: greedy slow mode writes "So the answer is N." inside the think block, and closing the block right
// after that line (kvlens' close text, as a switch, the cut probe or DEER append it) yields "Answer: N" at
// once, not more work. Pinned values come from tools/reasoner/pin_answers_v2.py.
#include <gtest/gtest.h>

#include <functional>

#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"

using namespace kvlens;

namespace {

const std::string kAnswerLine = "So the answer is ";

struct ReasonerV2 : testing::Test {
    static void SetUpTestSuite() {
        set_verbose(false);
        model = std::make_unique<Model>(ModelParams{KVLENS_REASONER_V2_MODEL});
    }
    static void TearDownTestSuite() { model.reset(); }
    static std::unique_ptr<Model> model;

    // Greedy continuation of `text` (special tokens parsed), at most max_tokens; stop early once `until`
    // returns true on the text so far.
    static Generation continue_greedy(const std::string& text, int max_tokens,
                                      const std::function<bool(const std::string&)>& until = nullptr) {
        SessionParams sp;
        sp.n_ctx = 1024;
        sp.n_threads = 2;
        Session s(*model, sp);
        GenerateParams gp;
        gp.max_tokens = max_tokens;
        // (a Generation's text is filled when it finishes: detokenize the tokens so far)
        if (until)
            gp.on_token = [&](int, const Generation& g) { return !until(model->detokenize(g.output)); };
        return generate(s, {model->tokenize(text, true, true)}, gp).at(0);
    }
    static std::string prompt(const std::string& q, ThinkMode mode) {
        return render_chat(ChatTemplate::Qwen3, {{"user", q}}, true, mode);
    }
};
std::unique_ptr<Model> ReasonerV2::model;

TEST_F(ReasonerV2, LoadsAsQwen3WithItsTemplate) {
    const ModelInfo& mi = model->info();
    EXPECT_EQ(mi.arch, "qwen3");
    EXPECT_EQ(mi.n_layer, 4);
    EXPECT_EQ(mi.n_embd, 256);
    EXPECT_EQ(mi.n_vocab, 261);
    EXPECT_EQ(detect_chat_template(mi.chat_template, mi.arch), ChatTemplate::Qwen3);
}

struct Pinned {
    const char* question;
    const char* fast;     // the whole fast answer
    const char* settled;  // the number on the first answer line of the greedy slow trace
};

// The first test question of each level of data/arith-reasoner/test.jsonl (as reasoner_fixture_test.cpp),
// pinned from arith-reasoner-v2.gguf by pin_answers_v2.py. The fast answers are wrong from level 2 on (fast
// mode is a guess, as in v1); the slow traces' answer lines are right.
const Pinned kPinned[] = {
    {"What is 66+1?", "Answer: 67", "67"},
    {"What is 62-61?", "Answer: 11", "1"},
    {"What is 795-101?", "Answer: 695", "694"},
    {"What is 289+424+723?", "Answer: 1411", "1436"},
    {"What is 852+899+369+250?", "Answer: 2111", "2370"},
};

TEST_F(ReasonerV2, FastAnswersArePinned) {
    for (const Pinned& p : kPinned) {
        const Generation g = continue_greedy(prompt(p.question, ThinkMode::Off), 64);
        EXPECT_EQ(g.stop, StopReason::EndOfTurn) << p.question;
        EXPECT_EQ(g.text, p.fast) << p.question;
    }
}

// Slow mode up to its first answer line; then the think block closed right after it (after the "." and
// after its line break) must give exactly that answer and end the turn.
TEST_F(ReasonerV2, ClosingTheThinkBlockAfterTheAnswerLineYieldsThatAnswer) {
    for (const Pinned& p : kPinned) {
        const std::string slow = prompt(p.question, ThinkMode::On);
        const Generation g = continue_greedy(slow, 800, [](const std::string& t) {
            const size_t at = t.find(kAnswerLine);
            return at != std::string::npos && t.find('\n', at) != std::string::npos;
        });
        const size_t at = g.text.find(kAnswerLine);
        ASSERT_NE(at, std::string::npos) << p.question << ": no answer line in " << g.text;
        EXPECT_EQ(g.text.rfind("<think>\n", 0), 0u) << g.text;
        const size_t dot = g.text.find('.', at);
        ASSERT_NE(dot, std::string::npos) << g.text;
        const std::string settled = g.text.substr(at + kAnswerLine.size(), dot - at - kAnswerLine.size());
        EXPECT_EQ(settled, p.settled) << p.question << "\n" << g.text;
        for (const size_t cut : {dot + 1, dot + 2}) {  // after "." and after ".\n"
            const std::string forced = slow + g.text.substr(0, cut) + think_close_text(ChatTemplate::Qwen3);
            const Generation a = continue_greedy(forced, 64);
            EXPECT_EQ(a.stop, StopReason::EndOfTurn) << p.question;
            EXPECT_EQ(a.text, "Answer: " + std::string(p.settled))
                << p.question << " cut after " << g.text.substr(0, cut);
        }
    }
}

}  // namespace
