// The KV embedding on tiny random models: the preset equals the pooling algebra done by hand on recorded
// rows, vectors are L2-normalised, a text gives the same vector alone and inside a batch, bad texts are
// reported per text without losing the others.
#include "methods/embed.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "capture/observers.h"
#include "util/error.h"

using namespace kvlens;

namespace {

std::string model_path(const std::string& arch) {
    return std::string(KVLENS_TEST_MODELS_DIR) + "/tiny-" + arch + ".gguf";
}

// The preset on a model with fewer than 4 layers: the same algebra over its last 2 layers.
PoolSpec tiny_preset() {
    PoolSpec s = embed_preset();
    s.layers = {-2, -1};
    return s;
}

double cosine_distance(const std::vector<float>& a, const std::vector<float>& b) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return 1.0 - ab / std::sqrt(aa * bb);
}

double norm(const std::vector<float>& a) {
    double s = 0;
    for (float x : a) s += (double)x * x;
    return std::sqrt(s);
}

const std::vector<std::string> kTexts = {
    "The quick brown fox jumps over the lazy dog.",
    "What is 7 times 8?",
    "Une phrase en français, avec des accents: été, à, ç.",
    "A somewhat longer text, so that the sequences of one batch have clearly different lengths and "
    "positions.",
    "日本語のテキストも埋め込みます。",
};

class EmbedTest : public testing::TestWithParam<std::string> {
protected:
    static void SetUpTestSuite() { set_verbose(false); }
};

TEST(EmbedPreset, IsThePapersPreset) {
    const PoolSpec s = embed_preset();
    EXPECT_EQ(s.kv_part, KvPart::KV);
    EXPECT_EQ(s.pos_agg, PosAgg::Mean);
    EXPECT_EQ(s.head_agg, HeadAgg::Mean);
    EXPECT_EQ(s.layer_agg, LayerAgg::Mean);
    EXPECT_EQ(s.layers, (std::vector<int>{-4, -3, -2, -1}));
    EXPECT_TRUE(s.normalize);
    EXPECT_EQ(s.window, 0);
}

// Rows recorded during the embedder's own pass, pooled here with plain loops: mean over the text positions
// (BOS left out), heads averaged, [K;V], layers averaged, L2-normalised. The same for the hidden baseline.
TEST_P(EmbedTest, PresetEqualsPoolingByHandOnRecordedRows) {
    Model model(ModelParams{model_path(GetParam())});
    const ModelInfo& mi = model.info();
    SessionParams sp;
    sp.n_ctx = 512;
    sp.n_seq_max = 1;
    Session session(model, sp);
    EmbedParams ep;
    ep.spec = tiny_preset();
    ep.hidden = true;
    ep.batch_seqs = 1;
    Embedder emb(session, ep);
    ASSERT_EQ(emb.kv_width(), 2 * mi.head_dim);
    ASSERT_EQ(emb.hidden_width(), mi.n_embd);

    for (const std::string& text : kTexts) {
        RowRecorder rec({Tap::K, Tap::V, Tap::Hidden}, 0);
        session.capture().subscribe(&rec);
        const std::vector<Embedding> es = emb.embed({text});
        session.capture().unsubscribe(&rec);
        ASSERT_TRUE(es[0].ok) << es[0].error;
        const int T = es[0].n_tokens;
        const int p0 = llama_vocab_get_add_bos(model.vocab()) ? 1 : 0;
        ASSERT_GT(T, p0 + 1);

        const int H = mi.n_head_kv, D = mi.head_dim, L = mi.n_layer;
        std::vector<double> kv(2 * D, 0.0), hid(mi.n_embd, 0.0);
        for (int l = L - 2; l < L; ++l) {
            for (int t = p0; t < T; ++t) {
                for (int part = 0; part < 2; ++part) {
                    const std::vector<float>* r = rec.get(part == 0 ? Tap::K : Tap::V, l, 0, t);
                    ASSERT_NE(r, nullptr) << "layer " << l << " pos " << t;
                    for (int h = 0; h < H; ++h)
                        for (int d = 0; d < D; ++d) kv[part * D + d] += (*r)[h * D + d] / H / (T - p0) / 2.0;
                }
                const std::vector<float>* r = rec.get(Tap::Hidden, l, 0, t);
                ASSERT_NE(r, nullptr) << "hidden layer " << l << " pos " << t;
                for (int d = 0; d < mi.n_embd; ++d) hid[d] += (*r)[d] / (T - p0) / 2.0;
            }
        }
        for (std::vector<double>* v : {&kv, &hid}) {
            double n = 0;
            for (double x : *v) n += x * x;
            for (double& x : *v) x /= std::sqrt(n);
        }
        ASSERT_EQ(es[0].kv.size(), kv.size());
        for (size_t i = 0; i < kv.size(); ++i)
            EXPECT_NEAR(es[0].kv[i], kv[i], 1e-5) << text << " kv[" << i << "]";
        ASSERT_EQ(es[0].hidden.size(), hid.size());
        for (size_t i = 0; i < hid.size(); ++i)
            EXPECT_NEAR(es[0].hidden[i], hid[i], 1e-5) << text << " hidden[" << i << "]";
    }
}

TEST_P(EmbedTest, VectorsAreL2Normalised) {
    Model model(ModelParams{model_path(GetParam())});
    SessionParams sp;
    sp.n_ctx = 512;
    sp.n_seq_max = 4;
    Session session(model, sp);
    EmbedParams ep;
    ep.spec = tiny_preset();
    ep.hidden = true;
    ep.batch_seqs = 4;
    Embedder emb(session, ep);
    for (const Embedding& e : emb.embed(kTexts)) {
        ASSERT_TRUE(e.ok) << e.error;
        EXPECT_NEAR(norm(e.kv), 1.0, 1e-5);
        EXPECT_NEAR(norm(e.hidden), 1.0, 1e-5);
    }
    // Without normalisation the norm is whatever the cache holds (a check that the one above can fail).
    ep.spec.normalize = false;
    Embedder raw(session, ep);
    EXPECT_GT(std::fabs(norm(raw.embed({kTexts[0]})[0].kv) - 1.0), 1e-3);
}

// Each text alone (one sequence) and inside a batch of all texts (other sequences in the same decode), and
// inside groups split by a small context: the same vector within 1e-5 cosine distance.
TEST_P(EmbedTest, SameVectorAloneAndInsideABatch) {
    Model model(ModelParams{model_path(GetParam())});
    EmbedParams ep;
    ep.spec = tiny_preset();
    ep.hidden = true;
    std::vector<Embedding> alone;
    {
        SessionParams sp;
        sp.n_ctx = 512;
        Session session(model, sp);
        ep.batch_seqs = 1;
        Embedder emb(session, ep);
        for (const std::string& t : kTexts) alone.push_back(emb.embed({t})[0]);
    }
    for (int n_ctx : {512, 64}) {
        SessionParams sp;
        sp.n_ctx = n_ctx;
        sp.n_seq_max = 5;
        sp.n_batch = 512;
        Session session(model, sp);
        ep.batch_seqs = 5;
        Embedder emb(session, ep);
        const std::vector<Embedding> batch = emb.embed(kTexts);
        for (size_t i = 0; i < kTexts.size(); ++i) {
            ASSERT_TRUE(batch[i].ok && alone[i].ok) << batch[i].error;
            EXPECT_LT(cosine_distance(alone[i].kv, batch[i].kv), 1e-5) << kTexts[i] << " n_ctx " << n_ctx;
            EXPECT_LT(cosine_distance(alone[i].hidden, batch[i].hidden), 1e-5)
                << kTexts[i] << " n_ctx " << n_ctx;
        }
    }
    // Different texts give different vectors (so the check above can fail).
    EXPECT_GT(cosine_distance(alone[0].kv, alone[1].kv), 1e-4);
}

TEST_P(EmbedTest, BadTextsAreReportedAndTheOthersStillEmbedded) {
    Model model(ModelParams{model_path(GetParam())});
    SessionParams sp;
    sp.n_ctx = 128;
    sp.n_seq_max = 4;
    Session session(model, sp);
    EmbedParams ep;
    ep.spec = tiny_preset();
    ep.batch_seqs = 4;
    Embedder emb(session, ep);
    std::string too_long;
    for (int i = 0; i < 400; ++i) too_long += "word" + std::to_string(i) + " ";
    const std::vector<std::string> texts = {kTexts[0], "", "  \t", "bad \xff\xfe bytes", too_long, kTexts[1]};
    const std::vector<Embedding> es = emb.embed(texts);
    ASSERT_EQ(es.size(), texts.size());
    EXPECT_TRUE(es[0].ok);
    EXPECT_EQ(es[1].error, "empty text");
    EXPECT_EQ(es[2].error, "empty text");
    EXPECT_EQ(es[3].error, "invalid UTF-8 at byte 4");
    // llama.cpp rounds the context up (to 256 here): the message names the context actually held.
    EXPECT_NE(es[4].error.find("do not fit the context of " + std::to_string(session.n_ctx()) + " tokens"),
              std::string::npos)
        << es[4].error;
    EXPECT_TRUE(es[5].ok);
    for (int i : {1, 2, 3, 4}) EXPECT_FALSE(es[i].ok);
    const std::vector<Embedding> ref = emb.embed({kTexts[0], kTexts[1]});
    EXPECT_LT(cosine_distance(es[0].kv, ref[0].kv), 1e-5);
    EXPECT_LT(cosine_distance(es[5].kv, ref[1].kv), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Archs, EmbedTest, testing::Values("llama", "qwen2", "qwen3"));

TEST(TextProblem, Utf8AndEmpty) {
    EXPECT_EQ(text_problem("plain"), "");
    EXPECT_EQ(text_problem("héllo 日本 😀"), "");
    EXPECT_EQ(text_problem(""), "empty text");
    EXPECT_EQ(text_problem(" \r\n"), "empty text");
    EXPECT_EQ(text_problem("a\xC0\xAF"), "invalid UTF-8 at byte 1");         // overlong '/'
    EXPECT_EQ(text_problem("ab\xED\xA0\x80"), "invalid UTF-8 at byte 2");    // surrogate
    EXPECT_EQ(text_problem("\xF4\x90\x80\x80"), "invalid UTF-8 at byte 0");  // above U+10FFFF
    EXPECT_EQ(text_problem("abc\xE6\x97"), "invalid UTF-8 at byte 3");       // truncated
    EXPECT_EQ(text_problem(std::string("a\0b", 3)), "NUL byte at byte 1");
}

TEST(Embedder, RejectsAPresetTheModelCannotHold) {
    set_verbose(false);
    Model model(ModelParams{model_path("llama")});
    Session session(model, SessionParams{});
    EXPECT_THROW(Embedder(session, EmbedParams{}), Error);  // last 4 layers of a 2-layer model
}

}  // namespace
