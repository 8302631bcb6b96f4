// The public API (include/kvlens/kvlens.h) against the internal path it wraps, on the tiny random models and
// the reasoning model: generation with scores (and calibration), think auto, embeddings and raw K/V must be
// exactly what the engine, capture and methods (and `kvlens generate --scores`) give; bad inputs give the
// documented status with a message naming the parameter or file, and leave the output alone.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "capture/dump.h"
#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "kvlens/kvlens.h"
#include "methods/calibration.h"
#include "methods/coe.h"
#include "methods/embed.h"
#include "methods/fast_slow.h"
#include "methods/router.h"

namespace {

const std::string kModels = KVLENS_TEST_MODELS_DIR;
const std::string kLlama = kModels + "/tiny-llama.gguf";
const std::string kQwen3 = kModels + "/tiny-qwen3.gguf";

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / ("kvlens_public_api_" + name)).string();
}

// Both maps hold the same names with bit-identical values (NaN equal to NaN).
void expect_same_scores(const std::map<std::string, double>& a, const std::map<std::string, double>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [k, v] : a) {
        ASSERT_TRUE(b.count(k)) << k;
        if (std::isnan(v))
            EXPECT_TRUE(std::isnan(b.at(k))) << k;
        else
            EXPECT_EQ(v, b.at(k)) << k;
    }
}

struct Handles {
    kvlens_model_ptr model;
    kvlens_session_ptr session;
};

Handles open(const std::string& path, kvlens_session_params sp = kvlens_session_default_params()) {
    Handles h;
    kvlens_model* m = nullptr;
    EXPECT_EQ(kvlens_model_load(path, kvlens_model_default_params(), &m), KVLENS_OK) << kvlens_last_error();
    h.model.reset(m);
    if (!m) return h;
    kvlens_session* s = nullptr;
    EXPECT_EQ(kvlens_session_open(m, sp, &s), KVLENS_OK) << kvlens_last_error();
    h.session.reset(s);
    return h;
}

kvlens_session_params two_threads() {
    kvlens_session_params sp = kvlens_session_default_params();
    sp.n_threads = 2;
    return sp;
}

// What `kvlens generate --scores` computes (cmd_generate.cpp), with the internal types directly.
struct Internal {
    kvlens::Generation g;
    std::map<std::string, double> scores;
};
Internal internal_generate(const std::string& path, const std::string& prompt,
                           const kvlens_generate_params& p, const kvlens::TokenCoeSpec& coe = {},
                           const std::vector<kvlens::Calibration>& cals = {}) {
    kvlens::Model model(kvlens::ModelParams{path});
    const kvlens::ModelInfo& mi = model.info();
    const kvlens::ChatTemplate tmpl = kvlens::detect_chat_template(mi.chat_template, mi.arch);
    std::vector<kvlens::ChatMessage> msgs;
    if (!p.system.empty()) msgs.push_back({"system", p.system});
    msgs.push_back({"user", prompt});
    const kvlens::ThinkMode think = p.think == KVLENS_THINK_ON    ? kvlens::ThinkMode::On
                                    : p.think == KVLENS_THINK_OFF ? kvlens::ThinkMode::Off
                                                                  : kvlens::ThinkMode::Default;
    const std::vector<llama_token> toks = model.tokenize(kvlens::render_chat(tmpl, msgs, true, think), true);
    kvlens::SessionParams sp;
    sp.n_threads = 2;
    kvlens::Session session(model, sp);
    kvlens::CoeScorer scorer(session, 0, (int)toks.size(), coe);
    kvlens::GenerateParams gp;
    gp.max_tokens = p.max_tokens;
    gp.sampling = {p.temperature, p.top_k, p.top_p, p.seed};
    Internal r;
    r.g = kvlens::generate(session, {toks}, gp).at(0);
    r.scores = scorer.result(r.g.steps).named();
    for (const auto& [k, v] : kvlens::calibrated_scores(r.scores, cals)) r.scores[k] = v;
    return r;
}

void expect_same_generation(const kvlens_generation& a, const Internal& b) {
    EXPECT_EQ(a.text, b.g.text);
    EXPECT_EQ(a.prompt_tokens, std::vector<int32_t>(b.g.prompt.begin(), b.g.prompt.end()));
    EXPECT_EQ(a.output_tokens, std::vector<int32_t>(b.g.output.begin(), b.g.output.end()));
    EXPECT_EQ(a.stop, kvlens::to_string(b.g.stop));
    expect_same_scores(a.scores, b.scores);
}

}  // namespace

TEST(PublicApi, VersionMacrosMatchTheLibrary) {
    EXPECT_STREQ(kvlens_version(), KVLENS_VERSION_STRING);
    EXPECT_EQ(std::to_string(KVLENS_VERSION_MAJOR) + "." + std::to_string(KVLENS_VERSION_MINOR) + "." +
                  std::to_string(KVLENS_VERSION_PATCH),
              KVLENS_VERSION_STRING);
}

TEST(PublicApi, GenerateWithScoresEqualsTheInternalPath) {
    for (const char* file : {"tiny-llama.gguf", "tiny-qwen2.gguf", "tiny-qwen3.gguf"}) {
        SCOPED_TRACE(file);
        const std::string path = kModels + "/" + file;
        Handles h = open(path, two_threads());
        ASSERT_TRUE(h.session);
        kvlens_generate_params greedy = kvlens_generate_default_params();
        greedy.max_tokens = 12;
        kvlens_generate_params sampled = greedy;
        sampled.temperature = 0.9f;
        sampled.seed = 7;
        sampled.system = "Be brief.";
        sampled.think = KVLENS_THINK_OFF;
        for (const kvlens_generate_params& p : {greedy, sampled}) {
            const Internal want = internal_generate(path, "What is 2+3?", p);
            ASSERT_FALSE(want.scores.empty());
            // Twice on the same session: each generation starts from an empty sequence.
            for (int round = 0; round < 2; ++round) {
                kvlens_generation g;
                ASSERT_EQ(kvlens_generate(h.session.get(), "What is 2+3?", p, &g), KVLENS_OK)
                    << kvlens_last_error();
                EXPECT_STREQ(kvlens_last_error(), "");
                expect_same_generation(g, want);
                EXPECT_TRUE(std::isfinite(g.scores.at("kv_coe_r")));
                EXPECT_TRUE(g.think_initial.empty());
            }
        }
        // scores off: the same answer, no scores.
        kvlens_generation g;
        greedy.scores = false;
        ASSERT_EQ(kvlens_generate(h.session.get(), "What is 2+3?", greedy, &g), KVLENS_OK);
        EXPECT_TRUE(g.scores.empty());
        EXPECT_EQ(g.text, internal_generate(path, "What is 2+3?", greedy).g.text);
    }
}

TEST(PublicApi, KvCoeSettingsOfTheSessionAreUsed) {
    kvlens_session_params sp = two_threads();
    sp.coe_layers = "all";
    sp.coe_kv_part = "kv_cat";
    sp.coe_positions = "generated";
    sp.coe_head_agg = "flatten";
    Handles h = open(kQwen3, sp);
    ASSERT_TRUE(h.session);
    kvlens_generate_params p = kvlens_generate_default_params();
    p.max_tokens = 10;
    kvlens::TokenCoeSpec coe;
    coe.layers = "all";
    coe.kv_part = kvlens::KvPart::KV;
    coe.positions = kvlens::CoePositions::Generated;
    coe.head_agg = kvlens::HeadAgg::Flatten;
    kvlens_generation g;
    ASSERT_EQ(kvlens_generate(h.session.get(), "Hello", p, &g), KVLENS_OK) << kvlens_last_error();
    expect_same_generation(g, internal_generate(kQwen3, "Hello", p, coe));
    // ... and they matter: the defaults give another kv_coe_r.
    EXPECT_NE(g.scores.at("kv_coe_r"), internal_generate(kQwen3, "Hello", p).scores.at("kv_coe_r"));
}

// The CLI's own output, as a user would compare it: every score of `kvlens generate --scores`.
TEST(PublicApi, GenerateEqualsTheCliScoresLine) {
    const std::string cli = std::string(KVLENS_BIN_DIR) + "/kvlens";
    if (!std::filesystem::exists(cli)) GTEST_SKIP() << "no " << cli;
    const std::string out = temp_path("cli_scores.jsonl");
    std::filesystem::remove(out);
    const std::string cmd = "'" + cli + "' generate -m '" + kLlama +
                            "' -p 'What is 2+3?' -n 9 --threads 2 --temp 0.7 --seed 3 --scores '" + out +
                            "' > /dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(out);
    const nlohmann::json j = nlohmann::json::parse(f);
    std::filesystem::remove(out);

    Handles h = open(kLlama, two_threads());
    ASSERT_TRUE(h.session);
    kvlens_generate_params p = kvlens_generate_default_params();
    p.max_tokens = 9;
    p.temperature = 0.7f;
    p.seed = 3;
    kvlens_generation g;
    ASSERT_EQ(kvlens_generate(h.session.get(), "What is 2+3?", p, &g), KVLENS_OK) << kvlens_last_error();
    // The CLI writes invalid UTF-8 (a random model's pieces) replaced by U+FFFD.
    EXPECT_EQ(nlohmann::json(g.text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
              j.at("text").dump());
    EXPECT_EQ(g.output_tokens, j.at("output_tokens").get<std::vector<int32_t>>());
    EXPECT_EQ(g.prompt_tokens, j.at("prompt_tokens").get<std::vector<int32_t>>());
    EXPECT_EQ(g.stop, j.at("stop").get<std::string>());
    ASSERT_EQ(g.scores.size(), j.at("scores").size());
    for (const auto& [k, v] : g.scores) {
        const nlohmann::json& c = j.at("scores").at(k);  // NaN is written as null
        if (std::isnan(v))
            EXPECT_TRUE(c.is_null()) << k;
        else
            EXPECT_EQ(v, c.get<double>()) << k;
    }
}

TEST(PublicApi, CalibrationAddsPCorrectAndIsRefusedForAnotherModel) {
    kvlens::Model model(kvlens::ModelParams{kLlama});
    const kvlens::ModelInfo& mi = model.info();
    kvlens::Calibration c = kvlens::fit_platt({-1, -0.5, 0, 0.2, 0.5, 1, 1.5, 2}, {0, 0, 1, 0, 1, 1, 0, 1});
    c.score = "kv_coe_r";
    c.model = kvlens::calibration_model_of(kLlama, mi.name, mi.arch, mi.n_layer);
    const std::string path = temp_path("cal.json");
    kvlens::save_calibration(c, path);
    c = kvlens::load_calibration(path);

    kvlens_session_params sp = two_threads();
    sp.calibration_path = path;
    Handles h = open(kLlama, sp);
    ASSERT_TRUE(h.session);
    kvlens_generate_params p = kvlens_generate_default_params();
    p.max_tokens = 8;
    kvlens_generation g;
    ASSERT_EQ(kvlens_generate(h.session.get(), "Hi", p, &g), KVLENS_OK) << kvlens_last_error();
    ASSERT_TRUE(g.scores.count("p_correct.kv_coe_r"));
    expect_same_generation(g, internal_generate(kLlama, "Hi", p, {}, {c}));

    // Fitted on a model with another architecture and layer count.
    kvlens::Calibration other = c;
    other.model.arch = "qwen3";
    other.model.n_layer = 3;
    other.model.size = -1;
    kvlens::save_calibration(other, path);
    kvlens_session* s = nullptr;
    EXPECT_EQ(kvlens_session_open(h.model.get(), sp, &s), KVLENS_ERR_MODEL_MISMATCH);
    EXPECT_EQ(s, nullptr);
    EXPECT_NE(std::string(kvlens_last_error()).find("fitted for model"), std::string::npos)
        << kvlens_last_error();
    std::filesystem::remove(path);
    EXPECT_EQ(kvlens_session_open(h.model.get(), sp, &s), KVLENS_ERR_FILE);
    EXPECT_NE(std::string(kvlens_last_error()).find(path), std::string::npos) << kvlens_last_error();
}

TEST(PublicApi, ThinkAutoEqualsRunFastSlow) {
    const std::string reasoner = KVLENS_REASONER_MODEL;
    kvlens::Model model(kvlens::ModelParams{reasoner});
    const kvlens::ModelInfo& mi = model.info();
    // A random router for this model: its predictions vary along the answer, so switches can happen.
    kvlens::RouterFile rf;
    rf.arch = mi.arch;
    rf.n_layer = mi.n_layer;
    rf.n_head_kv = mi.n_head_kv;
    rf.head_dim = mi.head_dim;
    rf.chat_template = "qwen3";
    rf.features = {32, 8};
    rf.pool = kvlens::router_pool_spec(rf.features, mi.n_layer);
    rf.classifier.net = kvlens::mlp_init(kvlens::router_feature_width(mi.n_head_kv, mi.head_dim), 8, 5);
    rf.classifier.out_scale = 50;
    const std::string path = temp_path("router.json");
    kvlens::save_router(path, rf);
    rf = kvlens::load_router(path);

    kvlens_session_params sp = two_threads();
    sp.n_ctx = 512;
    sp.router_path = path;
    Handles h = open(reasoner, sp);
    ASSERT_TRUE(h.session);
    kvlens_generate_params p = kvlens_generate_default_params();
    p.think = KVLENS_THINK_AUTO;
    p.scores = false;
    p.max_tokens = 120;
    p.check_every = 8;
    for (const char* q : {"What is 347+285?", "What is 2+3?"}) {
        SCOPED_TRACE(q);
        kvlens_generation g;
        ASSERT_EQ(kvlens_generate(h.session.get(), q, p, &g), KVLENS_OK) << kvlens_last_error();

        kvlens::SessionParams isp;
        isp.n_ctx = 512;
        isp.n_threads = 2;
        kvlens::Session session(model, isp);
        kvlens::FastSlowParams fp;
        fp.max_tokens = 120;
        fp.policy.check_every = 8;
        const kvlens::FastSlowResult r = kvlens::run_fast_slow(
            session, kvlens::ChatTemplate::Qwen3, {{"user", q}}, rf.features, &rf.classifier, fp);
        EXPECT_EQ(g.text, r.text);
        EXPECT_EQ(g.output_tokens, std::vector<int32_t>(r.tokens.begin(), r.tokens.end()));
        EXPECT_EQ(g.prompt_tokens, std::vector<int32_t>(r.prompt.begin(), r.prompt.end()));
        EXPECT_EQ(g.think_initial, kvlens::to_string(r.initial));
        EXPECT_EQ(g.think_final, kvlens::to_string(r.final));
        EXPECT_EQ(g.switch_at, r.switch_at);
        EXPECT_EQ(g.n_switch_tokens, r.n_switch_tokens);
        EXPECT_EQ(g.n_sampled, r.n_sampled);
        EXPECT_EQ(g.n_dropped, r.n_dropped);
        EXPECT_EQ(g.checks, r.checks);
        EXPECT_FALSE(g.checks.empty());
        EXPECT_EQ(g.answer, r.answer);
        EXPECT_EQ((float)g.route_score, r.prompt_score);
        EXPECT_TRUE(g.scores.empty());
    }
    // Scores are not computed with think auto: asked for, the call is refused.
    kvlens_generation g;
    g.text = "untouched";
    p.scores = true;
    EXPECT_EQ(kvlens_generate(h.session.get(), "What is 2+3?", p, &g), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(g.text, "untouched");
    // A router made for another model.
    Handles tiny = open(kLlama);
    kvlens_session* s = nullptr;
    EXPECT_EQ(kvlens_session_open(tiny.model.get(), sp, &s),
              KVLENS_ERR_INVALID_ARGUMENT);  // llama3: no thinking
    Handles q3 = open(kQwen3);
    EXPECT_EQ(kvlens_session_open(q3.model.get(), sp, &s), KVLENS_ERR_MODEL_MISMATCH);
    EXPECT_NE(std::string(kvlens_last_error()).find("trained for"), std::string::npos) << kvlens_last_error();
    EXPECT_EQ(s, nullptr);
    std::filesystem::remove(path);
}

TEST(PublicApi, EmbeddingsEqualTheEmbedder) {
    const std::vector<std::string> texts = {"a first text", "the second one is a little longer", "x y"};
    kvlens_session_params sp = two_threads();
    sp.n_seq_max = 2;
    Handles h = open(kQwen3, sp);
    ASSERT_TRUE(h.session);
    kvlens::Model model(kvlens::ModelParams{kQwen3});
    kvlens::SessionParams isp;
    isp.n_threads = 2;
    isp.n_seq_max = 2;
    kvlens::Session session(model, isp);

    kvlens_embed_params custom = kvlens_embed_default_params();
    custom.layers = "0";
    custom.kv_part = "k";
    custom.head_agg = "flatten";
    custom.normalize = false;
    for (const kvlens_embed_params& p : {kvlens_embed_default_params(), custom}) {
        kvlens::EmbedParams ep;
        ep.spec.kv_part = kvlens::parse_kv_part(p.kv_part);
        ep.spec.head_agg = kvlens::parse_head_agg(p.head_agg);
        ep.spec.pos_agg = kvlens::parse_pos_agg(p.pos_agg);
        ep.spec.normalize = p.normalize;
        ep.spec.layers = p.layers.empty() ? std::vector<int>{-3, -2, -1} : kvlens::parse_layers(p.layers);
        ep.batch_seqs = 2;
        kvlens::Embedder embedder(session, ep);
        const std::vector<kvlens::Embedding> want = embedder.embed(texts);

        kvlens_embeddings e;
        ASSERT_EQ(kvlens_embed(h.session.get(), texts, p, &e), KVLENS_OK) << kvlens_last_error();
        ASSERT_EQ(e.n, 3);
        ASSERT_EQ(e.width, embedder.kv_width());
        ASSERT_EQ(e.data.size(), (size_t)3 * e.width);
        for (int i = 0; i < 3; ++i)
            EXPECT_EQ(std::vector<float>(e.data.begin() + i * e.width, e.data.begin() + (i + 1) * e.width),
                      want[i].kv)
                << i;
    }
    EXPECT_EQ(kvlens_embed_default_params().normalize, true);

    kvlens_embeddings e;
    e.n = 42;
    EXPECT_EQ(kvlens_embed(h.session.get(), {"fine", "  "}, kvlens_embed_default_params(), &e),
              KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvlens_last_error()).find("texts[1]"), std::string::npos) << kvlens_last_error();
    custom.layers = "7";  // the model has 3
    EXPECT_EQ(kvlens_embed(h.session.get(), texts, custom, &e), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvlens_last_error()).find("layers"), std::string::npos) << kvlens_last_error();
    custom.layers = "0";
    custom.pos_agg = "median";
    EXPECT_EQ(kvlens_embed(h.session.get(), texts, custom, &e), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(e.n, 42);
}

TEST(PublicApi, KvEqualsDumpKv) {
    Handles h = open(kLlama, two_threads());
    ASSERT_TRUE(h.session);
    kvlens::Model model(kvlens::ModelParams{kLlama});
    kvlens::SessionParams isp;
    isp.n_threads = 2;
    kvlens::Session session(model, isp);
    const std::string text = "The chain of embeddings";
    const std::vector<llama_token> toks = model.tokenize(text, true);
    const kvlens::KvDump want = kvlens::dump_kv(session, toks, true);

    for (bool by_text : {true, false}) {
        kvlens_kv kv;
        const std::vector<int32_t> ids(toks.begin(), toks.end());
        ASSERT_EQ(by_text ? kvlens_kv_of_text(h.session.get(), text, true, &kv)
                          : kvlens_kv_of_tokens(h.session.get(), ids, true, &kv),
                  KVLENS_OK)
            << kvlens_last_error();
        EXPECT_EQ(kv.tokens, ids);
        EXPECT_EQ(kv.n_layer, want.n_layer);
        EXPECT_EQ(kv.n_tokens, (int)toks.size());
        EXPECT_EQ(kv.kv_width, want.kv_width);
        EXPECT_EQ(kv.k, want.k);
        EXPECT_EQ(kv.v, want.v);
        EXPECT_EQ(kv.hidden, want.hidden);
    }
    kvlens_kv kv;
    ASSERT_EQ(kvlens_kv_of_text(h.session.get(), text, false, &kv), KVLENS_OK);
    EXPECT_TRUE(kv.hidden.empty());
    EXPECT_EQ(kv.k, want.k);

    kv.n_layer = 42;
    EXPECT_EQ(kvlens_kv_of_tokens(h.session.get(), {1, -5}, false, &kv), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvlens_last_error()).find("tokens[1]"), std::string::npos) << kvlens_last_error();
    EXPECT_EQ(kvlens_kv_of_tokens(h.session.get(), {}, false, &kv), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(kvlens_kv_of_text(h.session.get(), "", false, &kv), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(kv.n_layer, 42);
}

TEST(PublicApi, BadInputsGiveTheDocumentedStatus) {
    kvlens_model* m = nullptr;
    EXPECT_EQ(kvlens_model_load("/nonexistent/model.gguf", kvlens_model_default_params(), &m),
              KVLENS_ERR_FILE);
    EXPECT_EQ(m, nullptr);
    EXPECT_NE(std::string(kvlens_last_error()).find("/nonexistent/model.gguf"), std::string::npos);
    EXPECT_STREQ(kvlens_status_name(KVLENS_ERR_FILE), "file");
    // Not a GGUF file.
    const std::string junk = temp_path("junk.gguf");
    std::ofstream(junk) << "not a model";
    EXPECT_EQ(kvlens_model_load(junk, kvlens_model_default_params(), &m), KVLENS_ERR_FILE);
    std::filesystem::remove(junk);
    EXPECT_EQ(kvlens_model_load(kLlama, kvlens_model_default_params(), nullptr), KVLENS_ERR_INVALID_ARGUMENT);
    kvlens_model_params mp = kvlens_model_default_params();
    mp.n_gpu_layers = -2;
    EXPECT_EQ(kvlens_model_load(kLlama, mp, &m), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(m, nullptr);

    Handles h = open(kLlama, two_threads());
    ASSERT_TRUE(h.session);
    kvlens_model_info info;
    ASSERT_EQ(kvlens_model_get_info(h.model.get(), &info), KVLENS_OK);
    EXPECT_EQ(info.arch, "llama");
    EXPECT_EQ(info.n_layer, 2);
    EXPECT_EQ(info.kv_width, 32);
    EXPECT_EQ(info.chat_template, "llama3");
    EXPECT_EQ(kvlens_model_get_info(nullptr, &info), KVLENS_ERR_INVALID_ARGUMENT);

    // Session parameters: each refusal names its parameter.
    struct Bad {
        const char* name;
        void (*edit)(kvlens_session_params&);
    };
    const Bad bad[] = {
        {"n_ctx", [](kvlens_session_params& p) { p.n_ctx = 0; }},
        {"n_seq_max", [](kvlens_session_params& p) { p.n_seq_max = 0; }},
        {"n_threads", [](kvlens_session_params& p) { p.n_threads = -1; }},
        {"flash_attn", [](kvlens_session_params& p) { p.flash_attn = (kvlens_flash_attn)7; }},
        {"kv_source", [](kvlens_session_params& p) { p.kv_source = (kvlens_kv_source)7; }},
        {"chat_template", [](kvlens_session_params& p) { p.chat_template = "jinja"; }},
        {"coe_layers", [](kvlens_session_params& p) { p.coe_layers = "0..oops"; }},
        {"coe_layers", [](kvlens_session_params& p) { p.coe_layers = "5"; }},  // 2 layers
        {"coe_kv_part", [](kvlens_session_params& p) { p.coe_kv_part = "q"; }},
        {"coe_positions", [](kvlens_session_params& p) { p.coe_positions = "prompt"; }},
        {"coe_head_agg", [](kvlens_session_params& p) { p.coe_head_agg = "max"; }},
    };
    for (const Bad& b : bad) {
        kvlens_session_params sp = kvlens_session_default_params();
        b.edit(sp);
        kvlens_session* s = nullptr;
        EXPECT_EQ(kvlens_session_open(h.model.get(), sp, &s), KVLENS_ERR_INVALID_ARGUMENT) << b.name;
        EXPECT_EQ(s, nullptr);
        EXPECT_EQ(std::string(kvlens_last_error()).rfind(b.name, 0), 0u)
            << b.name << ": " << kvlens_last_error();
    }
    kvlens_session* s = nullptr;
    kvlens_session_params sp = kvlens_session_default_params();
    sp.router_path = "/nonexistent/router.json";
    EXPECT_EQ(kvlens_session_open(h.model.get(), sp, &s), KVLENS_ERR_FILE);
    EXPECT_EQ(kvlens_session_open(nullptr, kvlens_session_default_params(), &s), KVLENS_ERR_INVALID_ARGUMENT);

    // Generation parameters.
    kvlens_generation g;
    g.text = "untouched";
    const kvlens_generate_params ok = kvlens_generate_default_params();
    EXPECT_EQ(kvlens_generate(h.session.get(), "", ok, &g), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(kvlens_generate(nullptr, "Hi", ok, &g), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(kvlens_generate(h.session.get(), "Hi", ok, nullptr), KVLENS_ERR_INVALID_ARGUMENT);
    kvlens_generate_params p = ok;
    p.max_tokens = 0;
    EXPECT_EQ(kvlens_generate(h.session.get(), "Hi", p, &g), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("max_tokens", 0), 0u);
    p = ok;
    p.top_p = 2;
    EXPECT_EQ(kvlens_generate(h.session.get(), "Hi", p, &g), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvlens_last_error()).find("top_p"), std::string::npos) << kvlens_last_error();
    p = ok;
    p.think = KVLENS_THINK_AUTO;
    p.scores = false;
    EXPECT_EQ(kvlens_generate(h.session.get(), "Hi", p, &g), KVLENS_ERR_INVALID_ARGUMENT);  // no router
    EXPECT_NE(std::string(kvlens_last_error()).find("router"), std::string::npos);
    p = ok;
    p.think = (kvlens_think)9;
    EXPECT_EQ(kvlens_generate(h.session.get(), "Hi", p, &g), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(g.text, "untouched");

    // A prompt longer than the context: a runtime error, and the session still works afterwards.
    kvlens_session_params small = two_threads();
    small.n_ctx = 32;
    Handles tiny = open(kLlama, small);
    ASSERT_TRUE(tiny.session);
    std::string long_prompt;
    for (int i = 0; i < 600; ++i) long_prompt += "word ";  // llama.cpp rounds n_ctx up to 256
    EXPECT_EQ(kvlens_generate(tiny.session.get(), long_prompt, ok, &g), KVLENS_ERR_RUNTIME);
    EXPECT_NE(std::string(kvlens_last_error()), "");
    p = ok;
    p.max_tokens = 2;
    EXPECT_EQ(kvlens_generate(tiny.session.get(), "Hi", p, &g), KVLENS_OK) << kvlens_last_error();
    EXPECT_STREQ(kvlens_last_error(), "");
    EXPECT_STREQ(kvlens_status_name(KVLENS_ERR_RUNTIME), "runtime");
}
