// The committed reasoning model (tools/reasoner/arith-reasoner.gguf): it loads as qwen3 with its chat
// template, the template renders both modes with single special tokens, and greedy answers to fixed questions
// (none in its training data) are the pinned ones in both modes, through kvlens' own generate().
#include <gtest/gtest.h>

#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"

using namespace kvlens;

namespace {

struct Reasoner : testing::Test {
    static void SetUpTestSuite() {
        set_verbose(false);
        model = std::make_unique<Model>(ModelParams{KVLENS_REASONER_MODEL});
    }
    static void TearDownTestSuite() { model.reset(); }
    static std::unique_ptr<Model> model;

    static std::string answer(const std::string& q, ThinkMode mode) {
        SessionParams sp;
        sp.n_ctx = 512;
        sp.n_threads = 2;
        Session s(*model, sp);
        const std::string text = render_chat(ChatTemplate::Qwen3, {{"user", q}}, true, mode);
        GenerateParams gp;
        gp.max_tokens = 320;
        const Generation g = generate(s, {model->tokenize(text, true, true)}, gp).at(0);
        EXPECT_EQ(g.stop, StopReason::EndOfTurn) << q;
        return g.text;
    }
};
std::unique_ptr<Model> Reasoner::model;

TEST_F(Reasoner, LoadsAsQwen3WithItsTemplate) {
    const ModelInfo& mi = model->info();
    EXPECT_EQ(mi.arch, "qwen3");
    EXPECT_EQ(mi.n_layer, 4);
    EXPECT_EQ(mi.n_embd, 256);
    EXPECT_EQ(mi.n_head_kv, 2);
    EXPECT_EQ(mi.head_dim, 64);
    EXPECT_EQ(mi.n_vocab, 261);
    EXPECT_EQ(detect_chat_template(mi.chat_template, mi.arch), ChatTemplate::Qwen3);
}

TEST_F(Reasoner, TemplateRendersBothModesWithSingleSpecialTokens) {
    const std::vector<ChatMessage> msgs = {{"user", "What is 12+34?"}};
    const std::string fast = render_chat(ChatTemplate::Qwen3, msgs, true, ThinkMode::Off);
    const std::string slow = render_chat(ChatTemplate::Qwen3, msgs, true, ThinkMode::On);
    EXPECT_EQ(slow, "<|im_start|>user\nWhat is 12+34?<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(fast, slow + "<think>\n\n</think>\n\n");
    const std::vector<llama_token> t = model->tokenize(fast, true, true);
    // No BOS; one token per special marker and per byte of text.
    const size_t n_text = std::string(
                              "user\nWhat is 12+34?\n"
                              "assistant\n"
                              "\n\n"
                              "\n\n")
                              .size();
    EXPECT_EQ(t.size(), n_text + 5);  // <|im_start|> x2, <|im_end|>, <think>, </think>
    EXPECT_EQ(model->token_to_piece(t.front(), true), "<|im_start|>");
    EXPECT_EQ(model->token_to_piece(t[t.size() - 6], true), "<think>");
    EXPECT_EQ(model->token_to_piece(t[t.size() - 3], true), "</think>");
    EXPECT_TRUE(model->is_eog(model->tokenize("<|im_end|>", false, true).at(0)));
}

struct Pinned {
    const char* question;
    const char* fast;
    const char* slow;
};

TEST_F(Reasoner, GreedyAnswersArePinnedInBothModes) {
    // The first test question of each level; regenerate with tools/reasoner/pin_answers.py after retraining.
    const Pinned pinned[] = {
        {"What is 66+1?", "Answer: 67", "<think>\n66+1 c0\n6+ c0 7\n+ c0 67\n=67\n</think>\n\nAnswer: 67"},
        {"What is 62-61?", "Answer: 1", "<think>\n62-61 c0\n6-6 c0 1\n- c0 01\n=1\n</think>\n\nAnswer: 1"},
        {"What is 795-101?", "Answer: 656",
         "<think>\n795-101 c0\n79-10 c0 5\n7-1 c0 95\n- c0 695\n=695\n</think>\n\nAnswer: 695"},
        {"What is 289+424+723?", "Answer: 1400",
         "<think>\n289+424 c0\n28+42 c1 3\n2+4 c1 13\n+ c0 713\n=713\n713+723 c0\n71+72 c0 6\n7+7 c0 36\n+ "
         "c1 436\n+ c0 1436\n=1436\n</think>\n\nAnswer: 1436"},
        {"What is 852+899+369+250?", "Answer: 2990",
         "<think>\n852+899 c0\n85+89 c1 1\n8+8 c1 51\n+ c1 751\n+ c0 1751\n=1751\n1751+369 c0\n175+36 c1 "
         "0\n17+3 c1 20\n1+ c1 120\n+ c0 2120\n=2120\n2120+250 c0\n212+25 c0 0\n21+2 c0 70\n2+ c0 370\n+ c0 "
         "2370\n=2370\n</think>\n\nAnswer: 2370"},
    };
    for (const Pinned& p : pinned) {
        EXPECT_EQ(answer(p.question, ThinkMode::Off), p.fast) << p.question;
        EXPECT_EQ(answer(p.question, ThinkMode::On), p.slow) << p.question;
    }
}

}  // namespace
