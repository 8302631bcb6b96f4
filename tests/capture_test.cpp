// Captured K/V against the engine's own cache contents (llama_state_seq_get_data), and streaming pools
// against a direct computation over the captured rows, on tiny random models of every architecture,
// flash attention on and off, prefill and decode, two sequences in one batch.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "capture/observers.h"
#include "capture/state_reader.h"
#include "engine/generate.h"
#include "util/error.h"

using namespace kvlens;

namespace {

std::string model_path(const std::string& arch) {
    return std::string(KVLENS_TEST_MODELS_DIR) + "/tiny-" + arch + ".gguf";
}

struct Case {
    std::string arch;
    FlashAttn fa;
    CaptureSource source = CaptureSource::Graph;
};

void PrintTo(const Case& c, std::ostream* os) {
    *os << c.arch << (c.fa == FlashAttn::On ? " fa on" : " fa off") << " " << to_string(c.source);
}

std::string case_name(const testing::TestParamInfo<Case>& p) {
    return p.param.arch + (p.param.fa == FlashAttn::On ? "_fa_on" : "_fa_off") + "_" +
           to_string(p.param.source);
}

class CaptureTest : public testing::TestWithParam<Case> {
protected:
    static void SetUpTestSuite() { set_verbose(false); }
};

// Generates from two prompts decoded together (prefill in one batch, then one token per sequence per
// batch) and checks every captured K/V row against the cache read back through the engine.
TEST_P(CaptureTest, CapturedKvEqualsCacheContents) {
    const Case c = GetParam();
    Model model(ModelParams{model_path(c.arch)});
    const ModelInfo& mi = model.info();
    SessionParams sp;
    sp.n_ctx = 256;
    sp.n_seq_max = 2;
    sp.flash_attn = c.fa;
    sp.capture_source = c.source;
    Session session(model, sp);
    RowRecorder rec({Tap::K, Tap::V});
    session.capture().subscribe(&rec);

    const std::vector<std::vector<llama_token>> prompts = {
        model.tokenize("Hello world, this is a test", true),
        model.tokenize("Another prompt, of a clearly different and longer length!", true)};
    GenerateParams gp;
    gp.max_tokens = 12;
    const std::vector<Generation> gens = generate(session, prompts, gp);
    ASSERT_EQ(gens.size(), 2u);
    ASSERT_NE(prompts[0].size(), prompts[1].size());
    EXPECT_EQ(session.n_decode_calls(),
              1 + (int64_t)std::max(gens[0].output.size(), gens[1].output.size()) - 1);

    for (int s = 0; s < 2; ++s) {
        const CacheSnapshot snap = read_seq_state(session.ctx(), s);
        ASSERT_EQ(snap.k_width, mi.kv_width());
        ASSERT_EQ(snap.v_width, mi.kv_width());
        EXPECT_EQ(snap.v_trans, c.fa == FlashAttn::Off);
        // Every fed token: the prompt (prefill) and all generated tokens but the last (decode).
        const int n_pos = (int)(gens[s].prompt.size() + gens[s].output.size() - 1);
        ASSERT_EQ(snap.n_cells(), n_pos);
        double max_rel = 0;
        for (int l = 0; l < mi.n_layer; ++l) {
            for (int p = 0; p < n_pos; ++p) {
                for (Tap tap : {Tap::K, Tap::V}) {
                    const std::vector<float>* got = rec.get(tap, l, s, p);
                    const float* ref = tap == Tap::K ? snap.k_row(l, p) : snap.v_row(l, p);
                    ASSERT_NE(got, nullptr) << "no capture for seq " << s << " layer " << l << " pos " << p;
                    ASSERT_NE(ref, nullptr);
                    for (int i = 0; i < mi.kv_width(); ++i) {
                        // The cache is F16: |x - f16(x)| <= 2^-11 |x| (plus subnormal slack); read from the
                        // cache itself, the rows are the cache's values exactly.
                        const double err = std::fabs((double)(*got)[i] - ref[i]);
                        if (c.source == CaptureSource::Cache) {
                            ASSERT_EQ((*got)[i], ref[i]);
                        }
                        ASSERT_LE(err, 4.9e-4 * std::fabs((*got)[i]) + 1e-6)
                            << (tap == Tap::K ? "K" : "V") << " seq " << s << " layer " << l << " pos " << p;
                        if (std::fabs((*got)[i]) > 1e-3)
                            max_rel = std::max(max_rel, err / std::fabs((*got)[i]));
                    }
                }
            }
        }
        if (c.source == CaptureSource::Graph) {
            EXPECT_GT(max_rel, 0.0)
                << "captured values equal the F16 cache exactly: are we reading the cache itself?";
        }
    }
    EXPECT_EQ(session.capture().nodes_lost(), 0);
    session.capture().unsubscribe(&rec);
}

// Direct (non-streaming) reference of the pooling algebra over recorded rows, for the knobs of method.md.
std::vector<float> reference_pool(const RowRecorder& rec, const PoolSpec& spec,
                                  const std::vector<int>& layers, llama_seq_id seq, llama_pos p0,
                                  llama_pos p1, int H, int D) {
    std::vector<std::vector<float>> per_layer;
    for (int l : layers) {
        std::vector<float> vec;
        for (Tap tap : {Tap::K, Tap::V}) {
            if ((tap == Tap::K && spec.kv_part == KvPart::V) || (tap == Tap::V && spec.kv_part == KvPart::K))
                continue;
            std::vector<const std::vector<float>*> rows;
            for (llama_pos p = p0; p < p1; ++p) rows.push_back(rec.get(tap, l, seq, p));
            if (spec.window > 0 && (int)rows.size() > spec.window)
                rows.erase(rows.begin(), rows.end() - spec.window);
            std::vector<double> acc(H * D, 0.0);
            if (spec.pos_agg == PosAgg::First) {
                for (int i = 0; i < H * D; ++i) acc[i] = (*rows.front())[i];
            } else if (spec.pos_agg == PosAgg::Last) {
                for (int i = 0; i < H * D; ++i) acc[i] = (*rows.back())[i];
            } else {
                for (const auto* r : rows)
                    for (int i = 0; i < H * D; ++i) acc[i] += (*r)[i];
                if (spec.pos_agg == PosAgg::Mean)
                    for (double& x : acc) x /= rows.size();
            }
            if (spec.head_agg == HeadAgg::Mean) {
                for (int d = 0; d < D; ++d) {
                    double m = 0;
                    for (int h = 0; h < H; ++h) m += acc[h * D + d];
                    vec.push_back((float)(m / H));
                }
            } else {
                for (double x : acc) vec.push_back((float)x);
            }
        }
        per_layer.push_back(vec);
    }
    std::vector<float> out;
    const size_t w = per_layer[0].size();
    switch (spec.layer_agg) {
        case LayerAgg::None:
        case LayerAgg::Flatten:
            for (const auto& v : per_layer) out.insert(out.end(), v.begin(), v.end());
            break;
        case LayerAgg::Last:
            out = per_layer.back();
            break;
        case LayerAgg::Mean:
        case LayerAgg::Sum:
            out.assign(w, 0.0f);
            for (const auto& v : per_layer)
                for (size_t i = 0; i < w; ++i) out[i] += v[i];
            if (spec.layer_agg == LayerAgg::Mean)
                for (float& x : out) x /= per_layer.size();
            break;
    }
    if (spec.normalize) {
        const size_t row = spec.layer_agg == LayerAgg::None ? w : out.size();
        for (size_t r0 = 0; r0 < out.size(); r0 += row) {
            double n = 0;
            for (size_t i = r0; i < r0 + row; ++i) n += (double)out[i] * out[i];
            n = std::sqrt(n);
            if (n > 0)
                for (size_t i = r0; i < r0 + row; ++i) out[i] = (float)(out[i] / n);
        }
    }
    return out;
}

// Every pooling knob, streamed from a live generation, equals the direct computation over captured rows.
TEST_P(CaptureTest, StreamingPoolsEqualDirectComputation) {
    const Case c = GetParam();
    Model model(ModelParams{model_path(c.arch)});
    const ModelInfo& mi = model.info();
    SessionParams sp;
    sp.n_ctx = 256;
    sp.flash_attn = c.fa;
    sp.capture_source = c.source;
    Session session(model, sp);
    RowRecorder rec({Tap::K, Tap::V}, 0);
    session.capture().subscribe(&rec);

    const std::vector<llama_token> prompt = model.tokenize("The quick brown fox jumps over", true);
    const llama_pos p0 = (llama_pos)prompt.size() - 1;  // producer positions
    std::vector<PoolSpec> specs;
    for (KvPart kp : {KvPart::K, KvPart::V, KvPart::KV})
        for (PosAgg pa : {PosAgg::Mean, PosAgg::Sum, PosAgg::Last, PosAgg::First})
            for (HeadAgg ha : {HeadAgg::Flatten, HeadAgg::Mean})
                for (LayerAgg la :
                     {LayerAgg::None, LayerAgg::Flatten, LayerAgg::Mean, LayerAgg::Sum, LayerAgg::Last})
                    for (int window : {0, 3}) {
                        PoolSpec s;
                        s.kv_part = kp;
                        s.pos_agg = pa;
                        s.head_agg = ha;
                        s.layer_agg = la;
                        s.window = window;
                        s.normalize = (specs.size() % 2) == 1;
                        s.layers = (specs.size() % 3) == 0 ? std::vector<int>{} : std::vector<int>{-1, 0};
                        specs.push_back(s);
                    }
    std::vector<std::unique_ptr<KvPool>> pools;
    std::vector<std::unique_ptr<PoolObserver>> observers;
    for (const PoolSpec& s : specs) {
        pools.push_back(std::make_unique<KvPool>(s, mi.n_layer, mi.n_head_kv, mi.head_dim));
        observers.push_back(std::make_unique<PoolObserver>(*pools.back(), 0, p0));
        session.capture().subscribe(observers.back().get());
    }
    GenerateParams gp;
    gp.max_tokens = 10;
    const Generation g = generate(session, {prompt}, gp).at(0);
    const llama_pos p1 = (llama_pos)(g.prompt.size() + g.output.size() - 1);
    ASSERT_GE(p1 - p0, 4) << "need more producer positions than the window";

    for (size_t i = 0; i < specs.size(); ++i) {
        const Pooled got = pools[i]->result();
        const std::vector<float> want =
            reference_pool(rec, specs[i], pools[i]->layers(), 0, p0, p1, mi.n_head_kv, mi.head_dim);
        ASSERT_EQ((size_t)got.n_vectors * got.width, want.size()) << "spec " << i;
        for (size_t j = 0; j < want.size(); ++j) {
            ASSERT_NEAR(got.data[j], want[j], 1e-4 * (1.0 + std::fabs(want[j])))
                << "spec " << i << " (" << to_string(specs[i].kv_part) << ", " << to_string(specs[i].pos_agg)
                << ", " << to_string(specs[i].head_agg) << ", " << to_string(specs[i].layer_agg)
                << ", window " << specs[i].window << ") element " << j;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(TinyModels, CaptureTest,
                         testing::Values(Case{"llama", FlashAttn::Off}, Case{"llama", FlashAttn::On},
                                         Case{"qwen2", FlashAttn::Off}, Case{"qwen2", FlashAttn::On},
                                         Case{"qwen3", FlashAttn::Off}, Case{"qwen3", FlashAttn::On},
                                         Case{"llama", FlashAttn::Off, CaptureSource::Cache},
                                         Case{"llama", FlashAttn::On, CaptureSource::Cache},
                                         Case{"qwen2", FlashAttn::Off, CaptureSource::Cache},
                                         Case{"qwen2", FlashAttn::On, CaptureSource::Cache},
                                         Case{"qwen3", FlashAttn::Off, CaptureSource::Cache},
                                         Case{"qwen3", FlashAttn::On, CaptureSource::Cache}),
                         case_name);

// With no observer, nothing is requested from the scheduler, and the logits are the same as with capture on.
TEST(CaptureCost, NoObserverRequestsNothingAndCaptureDoesNotChangeResults) {
    Model model(ModelParams{model_path("llama")});
    SessionParams sp;
    sp.n_ctx = 128;
    const std::vector<llama_token> prompt = model.tokenize("Capture must not change the output", true);
    GenerateParams gp;
    gp.max_tokens = 8;
    Session plain(model, sp);
    const Generation a = generate(plain, {prompt}, gp).at(0);
    EXPECT_EQ(plain.capture().rows_delivered(), 0);
    Session captured(model, sp);
    RowRecorder rec({Tap::K, Tap::V, Tap::Hidden, Tap::Embd});
    captured.capture().subscribe(&rec);
    const Generation b = generate(captured, {prompt}, gp).at(0);
    EXPECT_GT(captured.capture().rows_delivered(), 0);
    EXPECT_EQ(captured.capture().nodes_lost(), 0);
    EXPECT_EQ(a.output, b.output);
    for (size_t i = 0; i < a.steps.size(); ++i) EXPECT_FLOAT_EQ(a.steps[i].prob, b.steps[i].prob);
}

// Reading K/V from the cache costs one requested node per batch whatever the layer count, and hidden states
// still come from the graph beside it.
TEST(CaptureCache, OneSplitPerBatchAndHiddenBeside) {
    Model model(ModelParams{model_path("qwen3")});
    const ModelInfo& mi = model.info();
    for (CaptureSource src : {CaptureSource::Graph, CaptureSource::Cache}) {
        SessionParams sp;
        sp.n_ctx = 128;
        sp.capture_source = src;
        Session session(model, sp);
        RowRecorder kv({Tap::K, Tap::V}), hidden({Tap::Hidden});
        session.capture().subscribe(&kv);
        const std::vector<llama_token> t = model.tokenize("one two three", true);
        std::vector<BatchToken> batch;
        for (size_t i = 0; i < t.size(); ++i) batch.push_back({t[i], (llama_pos)i, 0, i + 1 == t.size()});
        session.decode(batch);
        EXPECT_EQ(session.capture().rows_delivered(), (int64_t)t.size() * 2 * mi.n_layer);
        // Graph: one node handed over per layer (K and V together); cache: one per batch.
        EXPECT_EQ(session.capture().nodes_requested(), src == CaptureSource::Graph ? mi.n_layer : 1);
        EXPECT_EQ(session.capture().nodes_lost(), 0);
        for (int l = 0; l < mi.n_layer; ++l)
            for (int p = 0; p < (int)t.size(); ++p) {
                ASSERT_NE(kv.get(Tap::K, l, 0, p), nullptr) << to_string(src);
                ASSERT_NE(kv.get(Tap::V, l, 0, p), nullptr) << to_string(src);
            }
        session.capture().subscribe(&hidden);
        batch = {{t[0], (llama_pos)t.size(), 0, true}};
        session.decode(batch);
        EXPECT_NE(hidden.get(Tap::Hidden, 0, 0, (llama_pos)t.size()), nullptr) << to_string(src);
        EXPECT_NE(kv.get(Tap::V, mi.n_layer - 1, 0, (llama_pos)t.size()), nullptr) << to_string(src);
        EXPECT_EQ(session.capture().nodes_lost(), 0);
    }
}

// The last layer's residual stream only has rows for tokens with logits: they must map to those tokens.
TEST(CaptureHidden, LastLayerRowsMapToOutputTokens) {
    Model model(ModelParams{model_path("qwen3")});
    const ModelInfo& mi = model.info();
    Session session(model, SessionParams{});
    RowRecorder rec({Tap::Hidden, Tap::Embd});
    session.capture().subscribe(&rec);
    const std::vector<llama_token> t = model.tokenize("one two three four", true);
    std::vector<BatchToken> batch;
    for (size_t i = 0; i < t.size(); ++i) batch.push_back({t[i], (llama_pos)i, 0, i + 1 == t.size()});
    session.decode(batch);
    const int last = mi.n_layer - 1, P = (int)t.size() - 1;
    EXPECT_NE(rec.get(Tap::Hidden, last, 0, P), nullptr);
    for (int p = 0; p < P; ++p) EXPECT_EQ(rec.get(Tap::Hidden, last, 0, p), nullptr) << "pos " << p;
    for (int p = 0; p <= P; ++p) {
        EXPECT_NE(rec.get(Tap::Hidden, 0, 0, p), nullptr);
        EXPECT_NE(rec.get(Tap::Embd, -1, 0, p), nullptr);
    }
    EXPECT_EQ(session.capture().nodes_lost(), 0);
}

TEST(Generate, PromptLongerThanContextIsAnError) {
    Model model(ModelParams{model_path("llama")});
    SessionParams sp;
    sp.n_ctx = 16;
    Session session(model, sp);
    // llama.cpp may round the context up: overflow whatever it chose, by one token.
    std::vector<llama_token> prompt(session.n_ctx(), 1);
    EXPECT_THROW(generate(session, {prompt}, GenerateParams{}), Error);
    prompt.pop_back();
    GenerateParams gp;
    gp.max_tokens = 4;
    // One free cell: the first generated token is fed into it, the second has no room and ends the answer.
    const Generation g = generate(session, {prompt}, gp).at(0);
    EXPECT_EQ(g.output.size(), 2u);
    EXPECT_EQ(g.stop, StopReason::ContextFull);
}

}  // namespace
