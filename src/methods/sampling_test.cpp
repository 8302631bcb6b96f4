// N samples sharing the prompt prefix, on the tiny random models: the prompt is computed once (counted
// independently from the K rows the capture sees), every sequence's cache holds the prefix, and each sample
// is the same answer with the same scores as generate() of that prompt alone with seed + i.
#include "methods/sampling.h"

#include <gtest/gtest.h>

#include <map>

#include "util/error.h"

using namespace kvlens;

namespace {

const std::string kModel = std::string(KVLENS_TEST_MODELS_DIR) + "/tiny-qwen3.gguf";

// Counts the layer-0 K rows computed per (sequence, position): one row = one forward pass of that token.
struct RowCounter : KvObserver {
    std::map<std::pair<llama_seq_id, llama_pos>, int> rows;
    int total = 0;
    bool wants(Tap tap, int layer) const override { return tap == Tap::K && layer == 0; }
    void on_rows(const TapRows& r) override {
        for (int i = 0; i < r.n_rows; ++i) {
            const int j = r.batch_idx[i];
            for (int s = 0; s < r.batch->n_seq_id[j]; ++s) ++rows[{r.batch->seq_id[j][s], r.pos(i)}];
            ++total;
        }
    }
};

struct Fixture : testing::Test {
    static void SetUpTestSuite() {
        set_verbose(false);
        model = std::make_unique<Model>(ModelParams{kModel});
    }
    static void TearDownTestSuite() { model.reset(); }
    static std::unique_ptr<Model> model;
    std::vector<llama_token> prompt() const {
        return model->tokenize("Four samples of one question share this prompt", true);
    }
    static SampleParams params(int n) {
        SampleParams p;
        p.n = n;
        p.max_tokens = 10;
        p.sampling.temperature = 1.5f;
        p.sampling.top_k = 0;
        p.sampling.top_p = 1.0f;
        p.sampling.seed = 42;
        return p;
    }
};
std::unique_ptr<Model> Fixture::model;

TEST_F(Fixture, ThePromptIsDecodedOnceAndEverySequenceHoldsThePrefix) {
    const std::vector<llama_token> p = prompt();
    const int n_prompt = (int)p.size(), n = 4;
    ASSERT_GT(n_prompt, 3);
    SessionParams sp;
    sp.n_ctx = 256;
    sp.n_seq_max = n;
    Session s(*model, sp);
    RowCounter counter;
    s.capture().subscribe(&counter);
    const SampleSet out = sample_n(s, p, params(n));
    s.capture().unsubscribe(&counter);

    ASSERT_EQ(out.samples.size(), (size_t)n);
    // Prefix positions: computed once, in sequence 0 only; the last prompt position once per sequence.
    for (int t = 0; t + 1 < n_prompt; ++t) {
        EXPECT_EQ(counter.rows[std::make_pair(0, t)], 1) << "pos " << t;
        for (int i = 1; i < n; ++i)
            EXPECT_EQ(counter.rows.count(std::make_pair(i, t)), 0u) << "seq " << i << " pos " << t;
    }
    for (int i = 0; i < n; ++i) EXPECT_EQ(counter.rows[std::make_pair(i, n_prompt - 1)], 1) << "seq " << i;
    // Every generated token except the last is fed back once.
    int64_t fed = 0;
    for (const SampleOut& o : out.samples) fed += (int64_t)o.gen.output.size() - 1;
    EXPECT_EQ(counter.total, n_prompt - 1 + n + fed);
    EXPECT_EQ(out.n_tokens_decoded, counter.total);
    EXPECT_EQ(out.n_prompt_tokens_decoded, n_prompt - 1 + n);
    // Decode calls: prefix, last prompt token of all sequences, then one per step of the longest sample.
    size_t longest = 0;
    for (const SampleOut& o : out.samples) longest = std::max(longest, o.gen.output.size());
    EXPECT_EQ(out.n_decode_calls, (int64_t)(2 + longest - 1));

    // The copied prefix is in every sequence's cache (positions 0 .. at least n_prompt - 1).
    llama_memory_t mem = llama_get_memory(s.ctx());
    for (int i = 0; i < n; ++i) {
        EXPECT_EQ(llama_memory_seq_pos_min(mem, i), 0) << "seq " << i;
        EXPECT_GE(llama_memory_seq_pos_max(mem, i), n_prompt - 1) << "seq " << i;
    }
}

TEST_F(Fixture, EachSampleEqualsGenerateAloneWithItsSeed) {
    const std::vector<llama_token> p = prompt();
    const int n = 3;
    SessionParams sp;
    sp.n_ctx = 256;
    sp.n_seq_max = n;
    Session s(*model, sp);
    const SampleSet out = sample_n(s, p, params(n));

    bool differ = false;
    for (int i = 0; i < n; ++i) {
        SessionParams one;
        one.n_ctx = 256;
        Session s1(*model, one);
        CoeScorer scorer(s1, 0, (int)p.size());
        GenerateParams gp;
        gp.max_tokens = params(n).max_tokens;
        gp.sampling = params(n).sampling;
        gp.sampling.seed += (uint32_t)i;
        const Generation g = generate(s1, {p}, gp).at(0);
        const SampleOut& o = out.samples[i];
        EXPECT_EQ(o.gen.output, g.output) << "sample " << i;
        EXPECT_EQ(o.gen.text, g.text);
        const auto ref = scorer.result(g.steps, g.output).named();
        for (const char* k : {"kv_coe_r", "kv_coe_c", "hs_coe_c", "max_prob", "inv_ppl"})
            EXPECT_NEAR(o.scores.at(k), ref.at(k), 1e-4) << "sample " << i << " " << k;
        EXPECT_EQ(o.coe.n_producer, (int64_t)o.gen.output.size()) << "sample " << i;
        if (i > 0 && o.gen.output != out.samples[0].gen.output) differ = true;
    }
    EXPECT_TRUE(differ) << "the seeds should give different samples";
}

TEST_F(Fixture, RefusesBadParameters) {
    SessionParams sp;
    sp.n_ctx = 64;
    sp.n_seq_max = 2;
    Session s(*model, sp);
    EXPECT_THROW(sample_n(s, prompt(), params(3)), Error);  // more samples than sequence slots
    EXPECT_THROW(sample_n(s, {}, params(2)), Error);
    SampleParams zero = params(2);
    zero.n = 0;
    EXPECT_THROW(sample_n(s, prompt(), zero), Error);
    // A one-token prompt has no prefix to share and still works.
    const SampleSet one = sample_n(s, {prompt()[0]}, params(2));
    EXPECT_EQ(one.n_prompt_tokens_decoded, 2);
}

}  // namespace
