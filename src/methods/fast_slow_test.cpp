// Fast/slow routing and online switching on the project's reasoning model (a real hybrid model: it opens
// <think> by itself in slow mode) with constant classifiers that force each decision: the prompt's features
// are the same whatever the mode and equal a pool computed directly from recorded K/V rows; a switch appends
// to the sequence without recomputing any earlier position; every sampled token is counted.
#include "methods/fast_slow.h"

#include <gtest/gtest.h>

#include <map>

#include "capture/observers.h"
#include "util/error.h"

using namespace kvlens;

namespace {

const std::string kReasoner = KVLENS_REASONER_MODEL;

// Forward passes per (sequence, position), from the layer-0 K rows the capture sees.
struct RowCounter : KvObserver {
    std::map<llama_pos, int> rows;
    bool wants(Tap tap, int layer) const override { return tap == Tap::K && layer == 0; }
    void on_rows(const TapRows& r) override {
        for (int i = 0; i < r.n_rows; ++i) ++rows[r.pos(i)];
    }
};

// A classifier whose prediction is d for every input.
KvClassifier constant_classifier(int n_features, float d) {
    KvClassifier c;
    c.net = mlp_init(n_features, 1, 0);
    std::fill(c.net.w1.begin(), c.net.w1.end(), 0.0f);
    std::fill(c.net.b1.begin(), c.net.b1.end(), 0.0f);
    std::fill(c.net.w2.begin(), c.net.w2.end(), 0.0f);
    c.net.b2 = d;
    return c;
}

struct FastSlow : testing::Test {
    static void SetUpTestSuite() {
        set_verbose(false);
        model = std::make_unique<Model>(ModelParams{kReasoner});
    }
    static void TearDownTestSuite() { model.reset(); }
    static std::unique_ptr<Model> model;

    std::unique_ptr<Session> session() const {
        SessionParams sp;
        sp.n_ctx = 512;
        sp.n_threads = 2;
        return std::make_unique<Session>(*model, sp);
    }
    int width() const { return 2 * model->info().kv_width(); }
    static std::vector<ChatMessage> question(const std::string& q) { return {{"user", q}}; }
    static FastSlowParams params(ThinkStart start, bool allow_switch, int check_every) {
        FastSlowParams p;
        p.start = start;
        p.allow_switch = allow_switch;
        p.policy.check_every = check_every;
        p.max_tokens = 300;
        return p;
    }
};
std::unique_ptr<Model> FastSlow::model;

TEST_F(FastSlow, TheFixtureIsAHybridQwen3Model) {
    const ModelInfo& mi = model->info();
    EXPECT_EQ(mi.arch, "qwen3");
    EXPECT_EQ(detect_chat_template(mi.chat_template, mi.arch), ChatTemplate::Qwen3);
    // The special tokens are single tokens.
    for (const char* s : {"<|im_start|>", "<|im_end|>", "<think>", "</think>"})
        EXPECT_EQ(model->tokenize(s, false, true).size(), 1u) << s;
}

TEST_F(FastSlow, PromptFeaturesAreTheSameInEveryModeAndEqualADirectPool) {
    const RouterFeatures f{32, 8};
    const auto msgs = question("What is 347+285-196?");
    const KvClassifier easy = constant_classifier(width(), 10), hard = constant_classifier(width(), 90);
    std::vector<std::vector<float>> feats;
    for (auto [start, clf] : {std::pair{ThinkStart::Fast, (const KvClassifier*)nullptr},
                              std::pair{ThinkStart::Slow, (const KvClassifier*)nullptr},
                              std::pair{ThinkStart::Auto, &easy}, std::pair{ThinkStart::Auto, &hard}}) {
        auto s = session();
        feats.push_back(
            run_fast_slow(*s, ChatTemplate::Qwen3, msgs, f, clf, params(start, false, 16)).prompt_features);
    }
    for (size_t i = 1; i < feats.size(); ++i) EXPECT_EQ(feats[i], feats[0]) << i;

    // Independently: record every K/V row of the prompt, then sum the last 32 positions of the mean over the
    // last min(8, n_layer) layers of [K;V].
    const ModelInfo& mi = model->info();
    const std::vector<llama_token> prompt =
        model->tokenize(render_chat_undecided(ChatTemplate::Qwen3, msgs), true, true);
    auto s = session();
    RowRecorder rec({Tap::K, Tap::V}, 0);
    s->capture().subscribe(&rec);
    std::vector<BatchToken> batch;
    for (size_t i = 0; i < prompt.size(); ++i) batch.push_back({prompt[i], (llama_pos)i, 0, false});
    s->decode(batch, false);
    s->capture().unsubscribe(&rec);
    const int n = (int)prompt.size(), kv = mi.kv_width(), nl = std::min(8, mi.n_layer);
    std::vector<double> want(2 * kv, 0.0);
    for (int pos = std::max(0, n - 32); pos < n; ++pos)
        for (int l = mi.n_layer - nl; l < mi.n_layer; ++l)
            for (int part = 0; part < 2; ++part) {
                const std::vector<float>* row = rec.get(part ? Tap::V : Tap::K, l, 0, pos);
                ASSERT_NE(row, nullptr);
                for (int j = 0; j < kv; ++j) want[part * kv + j] += (*row)[j] / nl;
            }
    ASSERT_EQ((int)feats[0].size(), 2 * kv);
    for (int j = 0; j < 2 * kv; ++j) EXPECT_NEAR(feats[0][j], want[j], 1e-4 * (1 + std::abs(want[j]))) << j;
}

TEST_F(FastSlow, RoutingFollowsThePromptScore) {
    const auto msgs = question("What is 47+8?");
    for (float d : {10.0f, 90.0f}) {
        const KvClassifier c = constant_classifier(width(), d);
        auto s = session();
        const FastSlowResult r =
            run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, &c, params(ThinkStart::Auto, false, 16));
        EXPECT_FLOAT_EQ(r.prompt_score, d);
        EXPECT_EQ(r.initial, d < 50 ? ThinkChoice::Fast : ThinkChoice::Slow);
        EXPECT_EQ(r.final, r.initial);
        EXPECT_EQ(r.switch_at, -1);
        EXPECT_TRUE(r.checks.empty());
        // Fast: the empty think block is in the sequence (prompt side, not counted); slow: the model opens
        // it.
        const std::string text = model->detokenize(r.tokens, true);
        if (d < 50) {
            EXPECT_EQ(text.rfind("<think>\n\n</think>\n\n", 0), 0u) << text;
            EXPECT_EQ(r.n_sampled, (int)r.tokens.size() -
                                       (int)model->tokenize("<think>\n\n</think>\n\n", false, true).size());
        } else {
            EXPECT_EQ(text.rfind("<think>\n", 0), 0u) << text;
            EXPECT_EQ(r.n_sampled, (int)r.tokens.size());
        }
        EXPECT_EQ(r.stop, StopReason::EndOfTurn);
    }
}

TEST_F(FastSlow, SlowToFastAppendsTheCloseTagWithoutRecomputingThePrefix) {
    const KvClassifier c = constant_classifier(width(), 10);  // below 30: leave the think block at once
    auto s = session();
    RowCounter counter;
    s->capture().subscribe(&counter);
    const int64_t calls0 = s->n_decode_calls();
    const FastSlowResult r = run_fast_slow(*s, ChatTemplate::Qwen3, question("What is 503-278+916?"), {32, 8},
                                           &c, params(ThinkStart::Slow, true, 8));
    s->capture().unsubscribe(&counter);
    ASSERT_EQ(r.switch_at, 8);
    EXPECT_EQ(r.initial, ThinkChoice::Slow);
    EXPECT_EQ(r.final, ThinkChoice::Fast);
    const int n_close = (int)model->tokenize("\n</think>\n\n", false, true).size();
    EXPECT_EQ(r.n_switch_tokens, n_close);
    EXPECT_EQ(r.n_generated(), r.n_sampled + n_close);
    ASSERT_EQ(r.stop, StopReason::EndOfTurn);
    // The first 8 sampled tokens, then the close tag, then the answer.
    const std::string first8 =
        model->detokenize(std::vector<llama_token>(r.tokens.begin(), r.tokens.begin() + 8), true);
    // (What the model writes after the forced close is its own business; this one sometimes goes on working
    // and closes the block again. The answer is what follows the last close tag.)
    EXPECT_EQ(r.text.rfind(first8 + "\n</think>\n\n", 0), 0u) << r.text;
    EXPECT_EQ(r.answer, r.text.substr(r.text.rfind("</think>") + 8));
    // One decode for the prompt, one per fed sampled token (all but the end-of-turn), one for the close tag;
    // every position computed exactly once.
    const int n_fed = r.n_sampled - 1;
    EXPECT_EQ(s->n_decode_calls() - calls0, 1 + n_fed + 1);
    const int n_pos = (int)r.prompt.size() + n_fed + n_close;
    ASSERT_EQ((int)counter.rows.size(), n_pos);
    for (const auto& [pos, count] : counter.rows) {
        EXPECT_LT(pos, n_pos);
        EXPECT_EQ(count, 1) << "position " << pos;
    }
    ASSERT_EQ(r.checks.size(), 1u);
    EXPECT_EQ(r.checks[0].first, 8);
}

TEST_F(FastSlow, FastToSlowKeepsThePromptAndCountsTheDroppedTokens) {
    const KvClassifier c = constant_classifier(width(), 90);  // above 70: think after all
    auto s = session();
    RowCounter counter;
    s->capture().subscribe(&counter);
    const FastSlowResult r = run_fast_slow(*s, ChatTemplate::Qwen3, question("What is 171+800+765?"), {32, 8},
                                           &c, params(ThinkStart::Fast, true, 4));
    s->capture().unsubscribe(&counter);
    ASSERT_EQ(r.switch_at, 4);
    EXPECT_EQ(r.n_dropped, 4);
    EXPECT_EQ(r.final, ThinkChoice::Slow);
    EXPECT_EQ(r.text.rfind("<think>\n", 0), 0u) << r.text;  // the sequence now holds the slow answer only
    EXPECT_EQ(r.n_sampled, 4 + (int)r.tokens.size());
    // Prompt positions were computed once; the dropped fast positions were computed again for the slow
    // answer.
    for (int pos = 0; pos < (int)r.prompt.size(); ++pos) EXPECT_EQ(counter.rows[pos], 1) << pos;
    EXPECT_EQ(counter.rows[(int)r.prompt.size()], 2);
}

TEST_F(FastSlow, TracingRecordsTheWindowsSwitchingReadsAndTheCutProbeIsWhatASwitchGives) {
    const auto msgs = question("What is 503-278+916?");
    const RouterFeatures f{32, 8};
    auto two = [&] {
        SessionParams sp;
        sp.n_ctx = 512;
        sp.n_threads = 2;
        sp.n_seq_max = 2;
        return std::make_unique<Session>(*model, sp);
    };
    FastSlowParams plain = params(ThinkStart::Slow, false, 8);
    FastSlowParams traced = plain;
    traced.trace_every = 8;
    traced.cut_max_tokens = 64;
    auto s = two();
    const FastSlowResult a = run_fast_slow(*s, ChatTemplate::Qwen3, msgs, f, nullptr, plain);
    s->clear();
    const FastSlowResult b = run_fast_slow(*s, ChatTemplate::Qwen3, msgs, f, nullptr, traced);
    // The probes run on a copy: the answer is the same token for token.
    EXPECT_EQ(a.tokens, b.tokens);
    ASSERT_EQ(b.stop, StopReason::EndOfTurn);
    ASSERT_EQ((int)b.trace.size(), (b.n_sampled - 1) / 8);  // the end-of-turn token is not fed
    int n_cut = 0;
    for (size_t i = 0; i < b.trace.size(); ++i) {
        const TraceWindow& w = b.trace[i];
        EXPECT_EQ(w.at, 8 * (int)(i + 1));
        EXPECT_EQ(w.mode, ThinkChoice::Slow);
        EXPECT_EQ((int)w.features.size(), width());
        const std::string so_far =
            model->detokenize(std::vector<llama_token>(b.tokens.begin(), b.tokens.begin() + w.at), true);
        EXPECT_EQ(w.in_think, so_far.find("</think>") == std::string::npos) << w.at;
        EXPECT_EQ(w.cut, w.in_think);
        n_cut += w.cut;
    }
    ASSERT_GE(n_cut, 2);

    // The same windows are what switching reads: a random classifier that never switches (thresholds out of
    // reach) records its prediction at every check.
    KvClassifier rnd;
    rnd.net = mlp_init(width(), 8, 5);
    FastSlowParams checking = params(ThinkStart::Slow, true, 8);
    checking.policy.delta = 200;
    s->clear();
    const FastSlowResult c = run_fast_slow(*s, ChatTemplate::Qwen3, msgs, f, &rnd, checking);
    EXPECT_EQ(c.tokens, a.tokens);
    ASSERT_EQ(c.checks.size(), b.trace.size());
    for (size_t i = 0; i < c.checks.size(); ++i) {
        EXPECT_EQ(c.checks[i].first, b.trace[i].at);
        EXPECT_EQ(c.checks[i].second, rnd.predict(b.trace[i].features.data())) << i;
    }

    // A cut probe gives what a real switch at that position gives (a classifier below 30 switches at the
    // first check), as long as the switched answer ends within the probe's budget.
    int compared = 0;
    for (int k : {0, 1}) {
        const TraceWindow& w = b.trace[k];
        ASSERT_TRUE(w.cut);
        const KvClassifier leave = constant_classifier(width(), 10);
        s->clear();
        const FastSlowResult sw =
            run_fast_slow(*s, ChatTemplate::Qwen3, msgs, f, &leave, params(ThinkStart::Slow, true, w.at));
        ASSERT_EQ(sw.switch_at, w.at);
        if (sw.n_sampled - w.at > traced.cut_max_tokens) continue;
        EXPECT_EQ(w.cut_answer, sw.answer) << w.at;
        EXPECT_EQ(w.cut_tokens, sw.n_sampled - w.at);
        EXPECT_EQ(w.cut_stop, sw.stop);
        ++compared;
    }
    EXPECT_GE(compared, 1);

    // The probe needs a second sequence.
    auto one = session();
    EXPECT_THROW(run_fast_slow(*one, ChatTemplate::Qwen3, msgs, f, nullptr, traced), Error);
}

TEST_F(FastSlow, OnTokenSeesEveryTokenAndKnowsWhatIsFinal) {
    const auto msgs = question("What is 171+800+765?");
    // Fast with a switch to slow after 4 tokens: the fast tokens are not final, the slow ones are.
    const KvClassifier c = constant_classifier(width(), 90);
    FastSlowParams p = params(ThinkStart::Fast, true, 4);
    std::vector<std::pair<size_t, bool>> seen;  // (tokens so far, final)
    p.on_token = [&](const FastSlowResult& r, bool final) {
        seen.emplace_back(r.tokens.size(), final);
        return true;
    };
    auto s = session();
    const FastSlowResult r = run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, &c, p);
    ASSERT_EQ(r.switch_at, 4);
    ASSERT_EQ((int)seen.size(), r.n_sampled - 1);                   // every sampled token but the end-of-turn
    for (int i = 0; i < 3; ++i) EXPECT_FALSE(seen[i].second) << i;  // fast, a switch still possible
    for (size_t i = 3; i < seen.size(); ++i) EXPECT_TRUE(seen[i].second) << i;
    EXPECT_EQ(seen.back().first, r.tokens.size() - 1);
    // Returning false stops.
    p.on_token = [](const FastSlowResult& so_far, bool) { return so_far.n_sampled < 5; };
    s->clear();
    const FastSlowResult stopped = run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, &c, p);
    EXPECT_EQ(stopped.stop, StopReason::Callback);
    EXPECT_EQ(stopped.n_sampled, 5);
}

// The training-free exits (issue #13's peers): a slow start, no router.
FastSlowParams exit_params(ThinkExitPolicy ex) {
    FastSlowParams p;
    p.start = ThinkStart::Slow;
    p.allow_switch = false;
    p.max_tokens = 300;
    p.exit = ex;
    return p;
}

TEST_F(FastSlow, ParseThinkExit) {
    EXPECT_EQ(parse_think_exit("on").kind, ThinkExit::None);
    const ThinkExitPolicy b = parse_think_exit("budget:64");
    EXPECT_EQ(b.kind, ThinkExit::Budget);
    EXPECT_EQ(b.budget, 64);
    EXPECT_EQ(to_string(b), "budget:64");
    EXPECT_EQ(parse_think_exit("deer").threshold, 0.95f);
    EXPECT_EQ(parse_think_exit("deer:0.5").threshold, 0.5f);
    EXPECT_EQ(to_string(parse_think_exit("deer:0.5")), "deer:0.5");
    for (const char* bad : {"budget:", "budget:0", "budget:-3", "budget:1x", "deer:", "deer:-1", "deer:x"})
        EXPECT_THROW(parse_think_exit(bad), Error) << bad;
}

TEST_F(FastSlow, BudgetStopsThinkingAtExactlyNTokensAndCountsEveryDecode) {
    ThinkExitPolicy ex;
    ex.kind = ThinkExit::Budget;
    ex.budget = 6;
    auto s = session();
    const int64_t calls0 = s->n_decode_calls();
    const FastSlowResult r = run_fast_slow(*s, ChatTemplate::Qwen3, question("What is 503-278+916?"), {32, 8},
                                           nullptr, exit_params(ex));
    const int n_close = (int)model->tokenize("\n</think>\n\n", false, true).size();
    ASSERT_EQ(r.exit, "budget") << r.text;
    EXPECT_EQ(r.n_think, 6);
    EXPECT_EQ(r.switch_at, 6);
    EXPECT_EQ(r.final, ThinkChoice::Fast);
    const std::string first6 =
        model->detokenize(std::vector<llama_token>(r.tokens.begin(), r.tokens.begin() + 6), true);
    EXPECT_EQ(first6.rfind("<think>", 0), 0u) << first6;
    EXPECT_EQ(r.text.rfind(first6 + "\n</think>\n\n", 0), 0u) << r.text;
    ASSERT_EQ(r.stop, StopReason::EndOfTurn);
    EXPECT_GT(r.n_answer, 0);
    EXPECT_EQ(r.n_think + n_close + r.n_answer, (int)r.tokens.size());
    EXPECT_EQ(r.n_sampled, r.n_think + r.n_answer);
    EXPECT_EQ(r.n_trial, 0);
    EXPECT_EQ(r.n_generated(), r.n_sampled + n_close);
    // The prompt, each sampled token but the end-of-turn, the close: what the run reports and the session
    // saw.
    EXPECT_EQ(r.n_decode_calls, 1 + (r.n_sampled - 1) + 1);
    EXPECT_EQ(s->n_decode_calls() - calls0, r.n_decode_calls);
    EXPECT_GT(r.wall_ms, 0);
}

std::unique_ptr<Session> two_sequences(const Model& m) {
    SessionParams sp;
    sp.n_ctx = 512;
    sp.n_threads = 2;
    sp.n_seq_max = 2;
    return std::make_unique<Session>(m, sp);
}

TEST_F(FastSlow, DeerAtThresholdZeroExitsAtTheFirstLineBreakAndCountsTheTrial) {
    ThinkExitPolicy ex;
    ex.kind = ThinkExit::Deer;
    ex.threshold = 0;
    auto s = two_sequences(*model);
    const int64_t calls0 = s->n_decode_calls();
    const FastSlowResult r = run_fast_slow(*s, ChatTemplate::Qwen3, question("What is 503-278+916?"), {32, 8},
                                           nullptr, exit_params(ex));
    ASSERT_EQ(r.exit, "deer") << r.text;
    EXPECT_EQ(r.n_trials, 1);
    EXPECT_GT(r.n_trial, 0);
    // The exit came right after the first sampled line break.
    int first_nl = -1;
    for (int i = 0; i < (int)r.tokens.size() && first_nl < 0; ++i)
        if (model->detokenize({r.tokens[i]}, true).find('\n') != std::string::npos) first_nl = i;
    ASSERT_GE(first_nl, 0);
    EXPECT_EQ(r.switch_at, first_nl + 1);
    EXPECT_EQ(r.n_think, r.switch_at);
    const int n_close = (int)model->tokenize("\n</think>\n\n", false, true).size();
    EXPECT_EQ(r.n_switch_tokens, n_close);
    EXPECT_EQ(r.n_think + n_close + r.n_answer, (int)r.tokens.size());
    EXPECT_EQ(r.n_generated(), r.n_sampled + n_close + r.n_trial);
    // The kept trial is the answer: its tokens follow the close.
    if (r.stop == StopReason::EndOfTurn && r.n_sampled == r.n_think) {
        EXPECT_EQ(r.n_answer, r.n_trial);
        // The prompt, the sampled tokens, the trial's close and its tokens but the end-of-turn.
        EXPECT_EQ(r.n_decode_calls, 1 + r.n_sampled + 1 + (r.n_trial - 1));
    }
    EXPECT_EQ(s->n_decode_calls() - calls0, r.n_decode_calls);
    EXPECT_FALSE(r.answer.empty());
}

TEST_F(FastSlow, DeerAboveOneNeverExitsAndLeavesTheSequenceAsThinkingAlone) {
    const auto msgs = question("What is 503-278+916?");
    auto s = two_sequences(*model);
    const FastSlowResult plain =
        run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, nullptr, exit_params({}));
    ThinkExitPolicy ex;
    ex.kind = ThinkExit::Deer;
    ex.threshold = 1.01f;
    ex.trial_max_tokens = 8;
    s->clear();
    const FastSlowResult r = run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, nullptr, exit_params(ex));
    EXPECT_EQ(plain.exit, "model");
    EXPECT_EQ(r.exit, "model");
    EXPECT_GT(r.n_trials, 1);
    EXPECT_GT(r.n_trial, r.n_trials);  // each trial sampled several tokens, all counted
    EXPECT_EQ(r.n_generated(), r.n_sampled + r.n_trial);
    // The dropped trials left the sequence's cache as it was: the same greedy answer.
    EXPECT_EQ(r.tokens, plain.tokens);
    EXPECT_EQ(r.text, plain.text);
    EXPECT_EQ(r.n_think + r.n_answer, plain.n_think + plain.n_answer);
    EXPECT_GT(r.n_decode_calls, plain.n_decode_calls + r.n_trials);
}

// A prompted hybrid given Qwen3's own think texts, on a template without thinking (ChatML renders a lone
// user turn as Qwen3 does), must run exactly what the native thinking template runs: same tokens, counts,
// exits and trace, in every policy. Only the answer differs: prompted, it is the whole text.
PromptedHybrid qwen3_as_prompted() {
    return {"<think>\n\n</think>\n\n", "", "\n</think>\n\n", "</think>"};
}

TEST_F(FastSlow, APromptedHybridWithQwen3sTextsRunsWhatTheThinkingTemplateRuns) {
    const auto msgs = question("What is 503-278+916?");
    ASSERT_EQ(fast_slow_prompt(ChatTemplate::ChatML, msgs, qwen3_as_prompted()),
              render_chat_undecided(ChatTemplate::Qwen3, msgs));
    ThinkExitPolicy budget;
    budget.kind = ThinkExit::Budget;
    budget.budget = 6;
    ThinkExitPolicy deer;
    deer.kind = ThinkExit::Deer;
    deer.threshold = 0;
    FastSlowParams traced = params(ThinkStart::Slow, false, 8);
    traced.trace_every = 8;
    traced.cut_max_tokens = 64;
    const std::vector<std::pair<std::string, FastSlowParams>> cases = {
        {"fast", params(ThinkStart::Fast, false, 8)},
        {"slow", params(ThinkStart::Slow, false, 8)},
        {"budget", exit_params(budget)},
        {"deer", exit_params(deer)},
        {"traced", traced}};
    auto s = two_sequences(*model);
    for (const auto& [name, native] : cases) {
        SCOPED_TRACE(name);
        FastSlowParams prompted = native;
        prompted.prompted = qwen3_as_prompted();
        s->clear();
        const FastSlowResult a = run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, nullptr, native);
        s->clear();
        const FastSlowResult b = run_fast_slow(*s, ChatTemplate::ChatML, msgs, {32, 8}, nullptr, prompted);
        EXPECT_EQ(a.prompt, b.prompt);
        EXPECT_EQ(a.tokens, b.tokens);
        EXPECT_EQ(a.text, b.text);
        EXPECT_EQ(b.answer, b.text);
        EXPECT_EQ(a.n_think, b.n_think);
        EXPECT_EQ(a.n_answer, b.n_answer);
        EXPECT_EQ(a.n_trial, b.n_trial);
        EXPECT_EQ(a.n_trials, b.n_trials);
        EXPECT_EQ(a.n_switch_tokens, b.n_switch_tokens);
        EXPECT_EQ(a.exit, b.exit);
        EXPECT_EQ(a.n_decode_calls, b.n_decode_calls);
        EXPECT_EQ(a.prompt_features, b.prompt_features);
        ASSERT_EQ(a.trace.size(), b.trace.size());
        for (size_t i = 0; i < a.trace.size(); ++i) {
            EXPECT_EQ(a.trace[i].in_think, b.trace[i].in_think) << i;
            EXPECT_EQ(a.trace[i].features, b.trace[i].features) << i;
            EXPECT_EQ(a.trace[i].cut_tokens, b.trace[i].cut_tokens) << i;
            ASSERT_EQ(a.trace[i].cut, b.trace[i].cut) << i;
            if (!a.trace[i].cut) continue;
            // The cut answer: native, what follows the last "</think>"; prompted, the close and all after it.
            const std::string& whole = b.trace[i].cut_answer;
            EXPECT_EQ(whole.rfind("\n</think>\n\n", 0), 0u) << i;
            EXPECT_EQ(whole.substr(whole.rfind("</think>") + 8), a.trace[i].cut_answer) << i;
        }
    }
}

TEST_F(FastSlow, APromptedHybridCommitsByItsTextsAndClosesWithItsClose) {
    // Texts of a different protocol on the same model: the fast text is in the sequence before the answer
    // and counts as neither thinking nor answer; a budget appends the prompted close after N tokens.
    const PromptedHybrid h{"Answer: ", "<think>\n", "\nSo: Answer: ", "Answer:"};
    const auto msgs = question("What is 47+8?");
    auto s = two_sequences(*model);
    FastSlowParams fast = params(ThinkStart::Fast, false, 8);
    fast.prompted = h;
    const FastSlowResult f = run_fast_slow(*s, ChatTemplate::ChatML, msgs, {32, 8}, nullptr, fast);
    EXPECT_EQ(f.text.rfind("Answer: ", 0), 0u) << f.text;
    const int n_fast = (int)model->tokenize("Answer: ", false, true).size();
    EXPECT_EQ(f.n_think, 0);
    EXPECT_EQ(f.n_answer, (int)f.tokens.size() - n_fast);
    EXPECT_EQ(f.n_sampled, f.n_answer);
    ThinkExitPolicy budget;
    budget.kind = ThinkExit::Budget;
    budget.budget = 5;
    FastSlowParams b = exit_params(budget);
    b.prompted = h;
    s->clear();
    const FastSlowResult r = run_fast_slow(*s, ChatTemplate::ChatML, msgs, {32, 8}, nullptr, b);
    ASSERT_EQ(r.exit, "budget") << r.text;
    EXPECT_EQ(r.n_think, 5);
    const int n_slow = (int)model->tokenize("<think>\n", false, true).size();
    const std::string before =
        model->detokenize(std::vector<llama_token>(r.tokens.begin(), r.tokens.begin() + n_slow + 5), true);
    EXPECT_EQ(r.text.rfind(before + "\nSo: Answer: ", 0), 0u) << r.text;
    EXPECT_EQ(r.answer, r.text);
    // Bad texts are refused, naming what is wrong.
    for (const PromptedHybrid& bad :
         {PromptedHybrid{"a", "b", "c", ""}, PromptedHybrid{"a", "b", "close", "marker"},
          PromptedHybrid{"a", "the marker", "the marker", "marker"}}) {
        FastSlowParams p = fast;
        p.prompted = bad;
        s->clear();
        EXPECT_THROW(run_fast_slow(*s, ChatTemplate::ChatML, msgs, {32, 8}, nullptr, p), Error);
    }
    EXPECT_THROW(check_prompted_hybrid(PromptedHybrid{"a", "b", "", "x"}, "h"), Error);
    EXPECT_NO_THROW(check_prompted_hybrid(h, "h"));
}

TEST_F(FastSlow, BadUseIsAnError) {
    auto s = session();
    const auto msgs = question("What is 1+1?");
    EXPECT_THROW(
        run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, nullptr, params(ThinkStart::Auto, false, 16)),
        Error);
    EXPECT_THROW(
        run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, nullptr, params(ThinkStart::Slow, true, 16)),
        Error);
    const KvClassifier wrong = constant_classifier(width() + 2, 10);
    EXPECT_THROW(
        run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, &wrong, params(ThinkStart::Auto, true, 16)),
        Error);
    EXPECT_THROW(
        run_fast_slow(*s, ChatTemplate::Llama3, msgs, {32, 8}, nullptr, params(ThinkStart::Fast, false, 16)),
        Error);
    ThinkExitPolicy deer;
    deer.kind = ThinkExit::Deer;
    EXPECT_THROW(run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, nullptr, exit_params(deer)), Error)
        << "one sequence: no room for the trials";
    FastSlowParams fast = exit_params(deer);
    fast.start = ThinkStart::Fast;
    EXPECT_THROW(run_fast_slow(*s, ChatTemplate::Qwen3, msgs, {32, 8}, nullptr, fast), Error);
}

}  // namespace
