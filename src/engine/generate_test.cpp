// Generation on the tiny random models: greedy vs sampling, seeds, step statistics against a direct
// softmax of the logits, stopping rules, and batched sequences equal to single ones.
#include "engine/generate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "engine/batcher.h"
#include "util/error.h"

using namespace kvlens;

namespace {

const std::string kModel = std::string(KVLENS_TEST_MODELS_DIR) + "/tiny-qwen3.gguf";

struct Fixture : testing::Test {
    static void SetUpTestSuite() {
        set_verbose(false);
        model = std::make_unique<Model>(ModelParams{kModel});
    }
    static void TearDownTestSuite() { model.reset(); }
    static std::unique_ptr<Model> model;
    std::vector<llama_token> prompt() const { return model->tokenize("Sampling is reproducible", true); }
    Generation run(const GenerateParams& gp, int n_seq_max = 1) {
        SessionParams sp;
        sp.n_ctx = 256;
        sp.n_seq_max = n_seq_max;
        Session s(*model, sp);
        return generate(s, {prompt()}, gp).at(0);
    }
};
std::unique_ptr<Model> Fixture::model;

TEST_F(Fixture, GreedyPicksTheMostLikelyTokenAndStatsMatchADirectSoftmax) {
    SessionParams sp;
    sp.n_ctx = 256;
    Session s(*model, sp);
    const std::vector<llama_token> p = prompt();
    std::vector<BatchToken> batch;
    for (size_t i = 0; i < p.size(); ++i) batch.push_back({p[i], (llama_pos)i, 0, i + 1 == p.size()});
    s.decode(batch);
    const int n_vocab = model->info().n_vocab;
    std::vector<float> logits(s.logits((int)p.size() - 1), s.logits((int)p.size() - 1) + n_vocab);

    GenerateParams gp;
    gp.max_tokens = 1;
    const Generation g = run(gp);
    ASSERT_EQ(g.output.size(), 1u);
    // Independent computation of the softmax statistics in long double.
    const llama_token argmax = (llama_token)(std::max_element(logits.begin(), logits.end()) - logits.begin());
    long double z = 0, m = logits[argmax];
    for (float l : logits) z += std::exp((long double)l - m);
    long double h = 0;
    for (float l : logits) {
        const long double q = std::exp((long double)l - m) / z;
        if (q > 0) h -= q * std::log(q);
    }
    EXPECT_EQ(g.output[0], argmax);
    EXPECT_NEAR(g.steps[0].max_prob, (double)(1 / z), 1e-6);
    EXPECT_NEAR(g.steps[0].prob, g.steps[0].max_prob, 1e-7);
    EXPECT_NEAR(g.steps[0].entropy, (double)h, 1e-4);
}

TEST_F(Fixture, SeededSamplingIsReproducibleAndSeedsDiffer) {
    GenerateParams gp;
    gp.max_tokens = 12;
    gp.sampling.temperature = 1.5f;
    gp.sampling.top_k = 0;
    gp.sampling.top_p = 1.0f;
    gp.sampling.seed = 7;
    const Generation a = run(gp), b = run(gp);
    EXPECT_EQ(a.output, b.output);
    gp.sampling.seed = 8;
    const Generation c = run(gp);
    EXPECT_NE(a.output, c.output);
    for (const StepStats& st : a.steps) {
        EXPECT_GT(st.prob, 0.0f);
        EXPECT_LE(st.prob, st.max_prob + 1e-7f);
        EXPECT_GE(st.entropy, 0.0f);
    }
}

TEST_F(Fixture, TopKOneEqualsGreedy) {
    GenerateParams greedy;
    greedy.max_tokens = 16;
    GenerateParams k1 = greedy;
    k1.sampling.temperature = 0.8f;
    k1.sampling.top_k = 1;
    k1.sampling.seed = 123;
    EXPECT_EQ(run(greedy).output, run(k1).output);
}

TEST_F(Fixture, MaxTokensAndCallbackStop) {
    GenerateParams gp;
    gp.max_tokens = 5;
    Generation g = run(gp);
    if (g.stop != StopReason::EndOfTurn) {
        EXPECT_EQ(g.output.size(), 5u);
        EXPECT_EQ(g.stop, StopReason::MaxTokens);
    }
    gp.max_tokens = 50;
    gp.on_token = [](int, const Generation& cur) { return cur.output.size() < 3; };
    g = run(gp);
    if (g.stop != StopReason::EndOfTurn) {
        EXPECT_EQ(g.output.size(), 3u);
        EXPECT_EQ(g.stop, StopReason::Callback);
    }
}

// Two sequences decoded together give the same greedy tokens as each decoded alone.
TEST_F(Fixture, BatchedSequencesEqualSingleOnes) {
    const std::vector<llama_token> p1 = model->tokenize("first prompt here", true);
    const std::vector<llama_token> p2 = model->tokenize("a second, longer prompt for the batch", true);
    GenerateParams gp;
    gp.max_tokens = 10;
    SessionParams sp;
    sp.n_ctx = 256;
    sp.n_seq_max = 2;
    Session both(*model, sp);
    const std::vector<Generation> g = generate(both, {p1, p2}, gp);
    sp.n_seq_max = 1;
    Session one(*model, sp);
    EXPECT_EQ(generate(one, {p1}, gp).at(0).output, g[0].output);
    one.clear();
    EXPECT_EQ(generate(one, {p2}, gp).at(0).output, g[1].output);
}

// score_forced (teacher forcing in one pass) returns what the step-wise forced decode returns: the same
// output, stop and text, and step statistics equal up to the rounding of batched kernels, for every chunk
// size; an answer is cut after its first end-of-generation token; bad input is an error.
TEST_F(Fixture, ForcedInOnePassEqualsStepWise) {
    const std::vector<llama_token> p = prompt();
    GenerateParams gp;
    gp.max_tokens = 24;
    gp.sampling.temperature = 0.9f;  // not greedy: the answer is not the model's own argmax path
    gp.sampling.seed = 7;
    const Generation sampled = run(gp);
    ASSERT_EQ(sampled.output.size(), 24u);
    SessionParams sp;
    sp.n_ctx = 256;
    Session s(*model, sp);
    Batcher stepwise(s, false);
    stepwise.join(0, p, 24, make_sampler({}, 0), {}, sampled.output);
    Generation ref;
    while (!stepwise.empty())
        for (Generation& g : stepwise.step()) ref = std::move(g);
    for (int chunk : {1, 5, 128}) {
        s.clear();
        const Generation g = score_forced(s, 0, p, sampled.output, chunk);
        EXPECT_EQ(g.output, ref.output);
        EXPECT_EQ(g.stop, ref.stop);
        EXPECT_EQ(g.text, ref.text);
        ASSERT_EQ(g.steps.size(), ref.steps.size());
        for (size_t i = 0; i < g.steps.size(); ++i) {
            EXPECT_NEAR(g.steps[i].prob, ref.steps[i].prob, 1e-4) << "chunk " << chunk << " step " << i;
            EXPECT_NEAR(g.steps[i].max_prob, ref.steps[i].max_prob, 1e-4)
                << "chunk " << chunk << " step " << i;
            EXPECT_NEAR(g.steps[i].entropy, ref.steps[i].entropy, 1e-3) << "chunk " << chunk << " step " << i;
        }
        EXPECT_EQ(s.seq_pos_max(0), (llama_pos)(p.size() + ref.output.size() - 2));  // last token not fed
    }
    // An end-of-generation token in the middle ends the answer there, as it ends a decode loop.
    std::vector<llama_token> with_eog = sampled.output;
    llama_token eog = -1;
    for (llama_token t = 0; t < model->info().n_vocab && eog < 0; ++t)
        if (model->is_eog(t)) eog = t;
    ASSERT_GE(eog, 0);
    with_eog[5] = eog;
    s.clear();
    const Generation cut = score_forced(s, 0, p, with_eog);
    EXPECT_EQ(cut.output.size(), 6u);
    EXPECT_EQ(cut.stop, StopReason::EndOfTurn);
    EXPECT_EQ(cut.steps.size(), 6u);
    s.clear();
    EXPECT_THROW(score_forced(s, 0, {}, sampled.output), Error);
    EXPECT_THROW(score_forced(s, 0, p, {}), Error);
    EXPECT_THROW(score_forced(s, 1, p, sampled.output), Error);                                    // one slot
    EXPECT_THROW(score_forced(s, 0, p, std::vector<llama_token>(300, sampled.output[0])), Error);  // n_ctx
}

// A session without capture has no eval callback (llama.cpp never calls it), generates the same tokens and
// statistics as one with capture, and refuses observers with an error that says why.
TEST_F(Fixture, SessionWithoutCaptureHasNoCallbackAndRefusesObservers) {
    GenerateParams gp;
    gp.max_tokens = 16;
    SessionParams sp;
    sp.n_ctx = 256;
    Session with(*model, sp);
    const Generation a = generate(with, {prompt()}, gp).at(0);
    EXPECT_GT(with.capture().callbacks(), 0);  // asked about every node, though nothing is wanted
    sp.capture = false;
    Session without(*model, sp);
    const Generation b = generate(without, {prompt()}, gp).at(0);
    EXPECT_EQ(without.capture().callbacks(), 0);
    EXPECT_EQ(a.output, b.output);
    ASSERT_EQ(a.steps.size(), b.steps.size());
    for (size_t i = 0; i < a.steps.size(); ++i) {
        EXPECT_EQ(a.steps[i].max_prob, b.steps[i].max_prob) << i;
        EXPECT_EQ(a.steps[i].entropy, b.steps[i].entropy) << i;
    }
    struct Any : KvObserver {
        bool wants(Tap, int) const override { return true; }
        void on_rows(const TapRows&) override {}
    } obs;
    EXPECT_TRUE(with.capture().accepts_observers());
    EXPECT_FALSE(without.capture().accepts_observers());
    try {
        without.capture().subscribe(&obs);
        FAIL() << "subscribe on a session without capture did not throw";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("capture off"), std::string::npos) << e.what();
    }
}

TEST_F(Fixture, BadParametersAreErrors) {
    SessionParams sp;
    sp.n_ctx = 64;
    Session s(*model, sp);
    GenerateParams gp;
    gp.sampling.top_p = 0.0f;
    EXPECT_THROW(generate(s, {prompt()}, gp), Error);
    gp = GenerateParams{};
    gp.max_tokens = 0;
    EXPECT_THROW(generate(s, {prompt()}, gp), Error);
    EXPECT_THROW(generate(s, {prompt(), prompt()}, GenerateParams{}), Error);  // 2 sequences, 1 slot
    EXPECT_THROW(generate(s, {{}}, GenerateParams{}), Error);                  // empty prompt
}

}  // namespace

namespace {

// step_stats in double precision, the obvious way: the reference for the vectorised float code.
StepStats reference_stats(const std::vector<float>& l, int chosen) {
    double m = -INFINITY;
    for (float x : l) m = std::max(m, (double)x);
    double z = 0, zl = 0;
    for (float x : l) {
        const double d = x - m, e = std::exp(d);
        z += e;
        zl += std::isinf(d) ? 0 : e * d;
    }
    return {(float)(std::exp(l[chosen] - m) / z), (float)(1 / z), (float)(std::log(z) - zl / z)};
}

}  // namespace

TEST(StepStats, MatchesDoublePrecisionOnVocabulariesOfEverySize) {
    // A Qwen-sized vocabulary (blocks of 1024 plus a tail), a tiny one (tail only), logits spread wide and
    // narrow, with -inf entries (masked tokens) and the max at either end.
    std::mt19937 rng(7);
    for (int n : {5, 1024, 151936, 152064 + 37}) {
        for (float spread : {0.5f, 8.0f, 60.0f}) {
            std::normal_distribution<float> dist(0.0f, spread);
            std::vector<float> l(n);
            for (float& x : l) x = dist(rng);
            if (n > 100) l[17] = l[n - 3] = -INFINITY;
            l[n - 1] = 3 * spread;  // the max, last
            for (int chosen : {n - 1, 0, n / 2}) {
                const StepStats got = step_stats(l.data(), n, chosen), want = reference_stats(l, chosen);
                SCOPED_TRACE("n " + std::to_string(n) + " spread " + std::to_string(spread));
                EXPECT_NEAR(got.max_prob, want.max_prob, 1e-6 * want.max_prob + 1e-12);
                EXPECT_NEAR(got.prob, want.prob, 1e-5 * want.prob + 1e-30);
                EXPECT_NEAR(got.entropy, want.entropy, 1e-5 * std::max(1.0f, want.entropy));
            }
        }
    }
}
