// The public API (include/kvlens/kvlens.h) against the internal path it wraps, on the tiny random models and
// the reasoning model: generation with scores (and calibration, features), think auto, N samples with a
// choice, scoring a given answer, embeddings, raw K/V, calibration files and the OpenAI-compatible service
// must be exactly what the engine, capture, methods and evaluation (and `kvlens generate --scores`) give; bad
// inputs give the documented status with a message naming the parameter or file, and leave the output alone.
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
#include "capture/observers.h"
#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "eval/matchers.h"
#include "kvlens/kvlens.h"
#include "methods/calibration.h"
#include "methods/coe.h"
#include "methods/embed.h"
#include "methods/fast_slow.h"
#include "methods/router.h"
#include "methods/sampling.h"
#include "methods/selection.h"

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
    r.scores = scorer.result(r.g.steps, r.g.output).named();
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

TEST(PublicApi, ThinkBudgetAndDeerArePoliciesOfGenerate) {
    kvlens_session_params sp = two_threads();
    sp.n_ctx = 512;
    sp.n_seq_max = 2;  // DEER's trials
    Handles h = open(KVLENS_REASONER_MODEL, sp);
    ASSERT_TRUE(h.session);
    kvlens_generate_params p = kvlens_generate_default_params();
    p.scores = false;
    p.max_tokens = 200;
    const std::string q = "What is 503-278+916?";
    auto run = [&](const std::string& think) {
        kvlens_generate_params g = p;
        EXPECT_EQ(kvlens_think_parse(think, &g), KVLENS_OK) << kvlens_last_error();
        kvlens_generation out;
        EXPECT_EQ(kvlens_generate(h.session.get(), q, g, &out), KVLENS_OK) << kvlens_last_error();
        EXPECT_EQ(out.think_policy, think);
        EXPECT_GT(out.n_decode_calls, 0);
        return out;
    };
    const kvlens_generation on = run("on");
    EXPECT_EQ(on.think_exit, "model");
    EXPECT_EQ(on.n_trial_tokens, 0);
    EXPECT_EQ(on.n_think_tokens + on.n_answer_tokens, (int)on.output_tokens.size());
    // The prompt and each output token but the end-of-turn.
    EXPECT_EQ(on.n_decode_calls, (int64_t)on.output_tokens.size());

    const kvlens_generation b = run("budget:7");
    EXPECT_EQ(b.think_exit, "budget");
    EXPECT_EQ(b.n_think_tokens, 7);
    EXPECT_EQ(b.n_trial_tokens, 0);
    EXPECT_EQ(b.n_sampled, b.n_think_tokens + b.n_answer_tokens);
    EXPECT_EQ(b.n_decode_calls, 1 + (b.n_sampled - 1) + 1);  // prompt, fed tokens, the appended close

    const kvlens_generation d0 = run("deer:0");
    EXPECT_EQ(d0.think_exit, "deer");
    EXPECT_EQ(d0.n_trials, 1);
    EXPECT_GT(d0.n_trial_tokens, 0);

    // Above 1 no trial is kept, and the dropped ones leave thinking's greedy answer as it was.
    const kvlens_generation d2 = run("deer:2");
    EXPECT_EQ(d2.think_exit, "model");
    EXPECT_GT(d2.n_trials, 0);
    EXPECT_GT(d2.n_trial_tokens, d2.n_trials);
    EXPECT_EQ(d2.text, on.text);
    EXPECT_EQ(d2.output_tokens, on.output_tokens);
    EXPECT_GT(d2.n_decode_calls, on.n_decode_calls);

    kvlens_generate_params bad = p;
    for (const char* name : {"budget:0", "budget:x", "deer:-1", "slow"}) {
        EXPECT_EQ(kvlens_think_parse(name, &bad), KVLENS_ERR_INVALID_ARGUMENT) << name;
        EXPECT_EQ(std::string(kvlens_last_error()).rfind("think: ", 0), 0u) << kvlens_last_error();
    }
    // Scores are not computed along an exit; one sequence has no room for the trials.
    ASSERT_EQ(kvlens_think_parse("deer", &bad), KVLENS_OK);
    EXPECT_EQ(bad.think, KVLENS_THINK_DEER);
    EXPECT_EQ(bad.deer_threshold, 0.95f);
    kvlens_generation g;
    bad.scores = true;
    EXPECT_EQ(kvlens_generate(h.session.get(), q, bad, &g), KVLENS_ERR_INVALID_ARGUMENT);
    Handles one = open(KVLENS_REASONER_MODEL, two_threads());
    bad.scores = false;
    EXPECT_EQ(kvlens_generate(one.session.get(), q, bad, &g), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvlens_last_error()).find("n_seq_max"), std::string::npos) << kvlens_last_error();
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

// capture = false: plain generation gives the same answer as with capture; what needs capture is refused
// before any decoding, naming the parameter.
TEST(PublicApi, SessionWithoutCaptureGeneratesAndRefusesWhatNeedsCapture) {
    kvlens_session_params sp = two_threads();
    Handles with = open(kLlama, sp);
    sp.capture = false;
    Handles without = open(kLlama, sp);
    ASSERT_TRUE(with.session && without.session);
    kvlens_generate_params p = kvlens_generate_default_params();
    p.max_tokens = 12;
    p.scores = false;
    kvlens_generation a, b;
    ASSERT_EQ(kvlens_generate(with.session.get(), "Hi", p, &a), KVLENS_OK) << kvlens_last_error();
    ASSERT_EQ(kvlens_generate(without.session.get(), "Hi", p, &b), KVLENS_OK) << kvlens_last_error();
    EXPECT_EQ(a.output_tokens, b.output_tokens);
    EXPECT_EQ(a.text, b.text);
    for (const char* what : {"scores", "features", "think"}) {
        kvlens_generate_params q = p;
        if (std::string(what) == "scores") q.scores = true;
        if (std::string(what) == "features") q.features = true;
        if (std::string(what) == "think") q.think = KVLENS_THINK_BUDGET;
        kvlens_generation g;
        g.text = "untouched";
        EXPECT_EQ(kvlens_generate(without.session.get(), "Hi", q, &g), KVLENS_ERR_INVALID_ARGUMENT) << what;
        const std::string e = kvlens_last_error();
        EXPECT_EQ(e.rfind(std::string(what) + ": needs capture", 0), 0u) << e;
        EXPECT_EQ(g.text, "untouched");
    }
}

TEST(PublicApi, ModelTextHelpers) {
    Handles h = open(kLlama, two_threads());
    ASSERT_TRUE(h.model);
    kvlens::Model model(kvlens::ModelParams{kLlama});
    std::vector<int32_t> t;
    ASSERT_EQ(kvlens_tokenize(h.model.get(), "<|eot_id|>hello", false, &t, false), KVLENS_OK);
    const std::vector<llama_token> want = model.tokenize("<|eot_id|>hello", false, false);
    EXPECT_EQ(t, std::vector<int32_t>(want.begin(), want.end()));
    std::string text;
    ASSERT_EQ(kvlens_detokenize(h.model.get(), t, false, &text), KVLENS_OK);
    EXPECT_EQ(text, model.detokenize(want, false));
    ASSERT_EQ(kvlens_parse_tokens(h.model.get(), "1,2,3", &t), KVLENS_OK);
    EXPECT_EQ(t, (std::vector<int32_t>{1, 2, 3}));
    EXPECT_EQ(kvlens_parse_tokens(h.model.get(), "1,x", &t), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(t, (std::vector<int32_t>{1, 2, 3}));  // left alone
    kvlens_model_info info;
    ASSERT_EQ(kvlens_model_get_info(h.model.get(), &info), KVLENS_OK);
    EXPECT_EQ(info.gguf_chat_template, model.info().chat_template);

    // Chat templates: as render_chat, "auto" the detected one.
    const std::vector<kvlens_chat_message> msgs = {{"system", "Be brief."}, {"user", "Hi"}};
    for (const char* name : {"auto", "chatml", "qwen3"}) {
        ASSERT_EQ(kvlens_chat_render(h.model.get(), name, msgs, KVLENS_THINK_OFF, true, &text), KVLENS_OK);
        const kvlens::ChatTemplate ct =
            std::string(name) == "auto" ? kvlens::ChatTemplate::Llama3 : kvlens::parse_chat_template(name);
        EXPECT_EQ(text, kvlens::render_chat(ct, {{"system", "Be brief."}, {"user", "Hi"}}, true,
                                            kvlens::ThinkMode::Off))
            << name;
    }
    EXPECT_EQ(kvlens_chat_render(h.model.get(), "jinja", msgs, KVLENS_THINK_OFF, true, &text),
              KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("chat_template", 0), 0u);
    EXPECT_EQ(kvlens_chat_render(h.model.get(), "auto", msgs, KVLENS_THINK_AUTO, true, &text),
              KVLENS_ERR_INVALID_ARGUMENT);

    // The model-free checks of a session's parameters.
    kvlens_session_params sp = kvlens_session_default_params();
    EXPECT_EQ(kvlens_session_params_check(sp), KVLENS_OK);
    sp.coe_kv_part = "q";
    EXPECT_EQ(kvlens_session_params_check(sp), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("coe_kv_part: ", 0), 0u);
    sp = kvlens_session_default_params();
    sp.coe_layers = "5";  // out of range for 2 layers: a check on the model, not here
    EXPECT_EQ(kvlens_session_params_check(sp), KVLENS_OK);
    EXPECT_FALSE(kvlens_data_dir().empty());
    EXPECT_EQ(kvlens_default_calibration_path("/m/x.gguf", "kv_coe_r"), "/m/x.calibration.kv_coe_r.json");
}

TEST(PublicApi, FeaturesEqualThePoolOfTheGeneration) {
    Handles h = open(kLlama, two_threads());
    ASSERT_TRUE(h.session);
    kvlens_generate_params p = kvlens_generate_default_params();
    p.max_tokens = 7;
    p.features = true;
    p.feature_positions = "producer";
    p.feature_layer_agg = "mean";
    p.feature_normalize = true;
    kvlens_generation g;
    ASSERT_EQ(kvlens_generate(h.session.get(), "What is 2+3?", p, &g), KVLENS_OK) << kvlens_last_error();

    kvlens::Model model(kvlens::ModelParams{kLlama});
    const kvlens::ModelInfo& mi = model.info();
    const std::vector<llama_token> toks =
        model.tokenize(kvlens::render_chat(kvlens::ChatTemplate::Llama3, {{"user", "What is 2+3?"}}, true,
                                           kvlens::ThinkMode::Default),
                       true);
    kvlens::SessionParams sp;
    sp.n_threads = 2;
    kvlens::Session session(model, sp);
    kvlens::PoolSpec spec;
    spec.layer_agg = kvlens::LayerAgg::Mean;
    spec.normalize = true;
    kvlens::KvPool pool(spec, mi.n_layer, mi.n_head_kv, mi.head_dim);
    kvlens::PoolObserver obs(pool, 0, (llama_pos)toks.size() - 1);
    session.capture().subscribe(&obs);
    kvlens::GenerateParams gp;
    gp.max_tokens = 7;
    const kvlens::Generation want = kvlens::generate(session, {toks}, gp).at(0);
    session.capture().unsubscribe(&obs);
    const kvlens::Pooled r = pool.result();
    EXPECT_EQ(g.text, want.text);
    EXPECT_EQ(g.feature_width, r.width);
    EXPECT_EQ(g.feature_n_vectors, r.n_vectors);
    EXPECT_EQ(g.feature_data, r.data);
    EXPECT_EQ(g.feature_layers, pool.layers());
    EXPECT_EQ(g.feature_n_positions, pool.count());
    // The KV-CoE chain behind kv_coe_*: one state per producer position.
    EXPECT_EQ(g.coe_n_states, (int64_t)want.output.size());
    EXPECT_EQ(g.coe_layers, (std::vector<int>{0, 1}));  // the last 4 of 2 layers
    EXPECT_EQ(g.coe_m.size() + 1, (size_t)g.coe_n_states);
    EXPECT_EQ(g.coe_status, "ok");

    p.feature_kv_part = "q";
    EXPECT_EQ(kvlens_generate_params_check(p), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("feature_kv_part: ", 0), 0u);
    p.feature_kv_part = "k";
    p.feature_layers = "7";  // 2 layers: refused on the model
    EXPECT_EQ(kvlens_generate_params_check(p), KVLENS_OK);
    EXPECT_EQ(kvlens_generate(h.session.get(), "Hi", p, &g), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("feature_layers: ", 0), 0u) << kvlens_last_error();
}

TEST(PublicApi, KvDecodeFromEqualsDumpKv) {
    Handles h = open(kLlama, two_threads());
    ASSERT_TRUE(h.session);
    kvlens::Model model(kvlens::ModelParams{kLlama});
    kvlens::SessionParams isp;
    isp.n_threads = 2;
    kvlens::Session session(model, isp);
    const std::vector<llama_token> toks = model.tokenize("one two three four five", true);
    const kvlens::KvDump want = kvlens::dump_kv(session, toks, false, 3);
    kvlens_kv kv;
    ASSERT_EQ(kvlens_kv_of_tokens(h.session.get(), {toks.begin(), toks.end()}, false, &kv, 3), KVLENS_OK);
    EXPECT_EQ(kv.k, want.k);
    EXPECT_EQ(kv.v, want.v);
    EXPECT_EQ(kvlens_kv_of_tokens(h.session.get(), {toks.begin(), toks.end()}, false, &kv, 99),
              KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("decode_from: 99 is more than the ", 0), 0u);
}

TEST(PublicApi, ScoreAnswerOfTheModelsOwnAnswerGivesItsScores) {
    const std::string reasoner = KVLENS_REASONER_MODEL;
    kvlens_session_params sp = two_threads();
    sp.n_ctx = 1024;
    Handles h = open(reasoner, sp);
    ASSERT_TRUE(h.session);
    kvlens_generate_params p = kvlens_generate_default_params();
    p.think = KVLENS_THINK_OFF;
    p.max_tokens = 64;
    kvlens_generation g;
    ASSERT_EQ(kvlens_generate(h.session.get(), "What is 12+7?", p, &g), KVLENS_OK) << kvlens_last_error();
    ASSERT_EQ(g.stop, "end_of_turn");
    kvlens_score_params sc = kvlens_score_default_params();
    sc.think = KVLENS_THINK_OFF;
    kvlens_answer_scores a;
    ASSERT_EQ(kvlens_score_answer(h.session.get(), {{"user", "What is 12+7?"}}, g.text, sc, &a), KVLENS_OK)
        << kvlens_last_error();
    EXPECT_EQ(a.tokens, g.output_tokens);
    EXPECT_EQ(a.n_prompt, (int)g.prompt_tokens.size());
    EXPECT_EQ(a.stop, "end_of_turn");  // the end-of-turn token closes the forced answer
    ASSERT_EQ(a.scores.size(), g.scores.size());
    for (const auto& [k, v] : g.scores) {
        if (!std::isnan(v)) {
            EXPECT_NEAR(a.scores.at(k), v, 1e-6 * std::max(1.0, std::fabs(v))) << k;
        }
    }
    EXPECT_EQ(kvlens_score_answer(h.session.get(), {}, "x", sc, &a), KVLENS_ERR_INVALID_ARGUMENT);
    sc.end_of_turn = false;
    EXPECT_EQ(kvlens_score_answer(h.session.get(), {{"user", "Hi"}}, "", sc, &a),
              KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("answer: ", 0), 0u);
}

TEST(PublicApi, SampleNEqualsSampleNAndTheSelection) {
    kvlens_session_params sp = two_threads();
    sp.n_seq_max = 3;
    Handles h = open(kQwen3, sp);
    ASSERT_TRUE(h.session);
    kvlens_sample_params p = kvlens_sample_default_params();
    p.n = 3;
    p.max_tokens = 6;
    p.seed = 11;
    p.strategy = "best";
    p.score = "max_prob";
    p.reference = "5";
    EXPECT_EQ(kvlens_sample_params_check(p), KVLENS_OK);
    kvlens_samples r;
    ASSERT_EQ(kvlens_sample_n(h.session.get(), "What is 2+3?", p, &r), KVLENS_OK) << kvlens_last_error();

    kvlens::Model model(kvlens::ModelParams{kQwen3});
    const std::vector<llama_token> toks =
        model.tokenize(kvlens::render_chat(kvlens::ChatTemplate::Qwen3, {{"user", "What is 2+3?"}}, true,
                                           kvlens::ThinkMode::Default),
                       true);
    kvlens::SessionParams isp;
    isp.n_threads = 2;
    isp.n_seq_max = 3;
    kvlens::Session session(model, isp);
    kvlens::SampleParams ip;
    ip.n = 3;
    ip.max_tokens = 6;
    ip.sampling = {0.7f, 0, 0.95f, 11};
    const kvlens::SampleSet set = kvlens::sample_n(session, toks, ip);
    std::vector<kvlens::Candidate> cands;
    ASSERT_EQ(r.samples.size(), 3u);
    for (int i = 0; i < 3; ++i) {
        const kvlens::SampleOut& so = set.samples[i];
        EXPECT_EQ(r.samples[i].text, so.gen.text);
        expect_same_scores(r.samples[i].scores, so.scores);
        const kvlens::MatchResult m = kvlens::match_answer(kvlens::MatcherKind::LastNumber, so.gen.text, "5");
        EXPECT_EQ(r.samples[i].extracted, m.extracted);
        EXPECT_EQ(r.samples[i].correct, m.correct && so.gen.stop == kvlens::StopReason::EndOfTurn);
        cands.push_back({m.extracted, so.scores.at("max_prob")});
    }
    const kvlens::Choice ch = kvlens::select_answer(kvlens::Strategy::BestOfN, cands);
    EXPECT_EQ(r.chosen, ch.index);
    EXPECT_EQ(r.answer, ch.answer);
    EXPECT_EQ(r.votes, ch.votes);
    EXPECT_EQ(r.score, "max_prob");
    EXPECT_FALSE(r.abstained);
    p.abstain_below = 2;  // above any probability
    ASSERT_EQ(kvlens_sample_n(h.session.get(), "What is 2+3?", p, &r), KVLENS_OK);
    EXPECT_TRUE(r.abstained);

    kvlens_sample_params bad = p;
    bad.strategy = "vote";
    EXPECT_EQ(kvlens_sample_params_check(bad), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("strategy: ", 0), 0u);
    bad = p;
    bad.strategy = "weighted";  // no calibration
    EXPECT_EQ(kvlens_sample_n(h.session.get(), "Hi", bad, &r), KVLENS_ERR_INVALID_ARGUMENT);
    bad = p;
    bad.score = "nope";
    EXPECT_EQ(kvlens_sample_n(h.session.get(), "Hi", bad, &r), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()), "score 'nope': no such score");
    bad = p;
    bad.n = 4;  // more than n_seq_max
    EXPECT_EQ(kvlens_sample_n(h.session.get(), "Hi", bad, &r), KVLENS_ERR_INVALID_ARGUMENT);
}

TEST(PublicApi, CalibrateFitsSavesAndLoads) {
    const std::string dir = temp_path("calibrate");
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const std::string from = dir + "/samples.jsonl";
    {
        std::ofstream f(from);
        const double s[] = {-1, -0.5, 0, 0.2, 0.5, 1, 1.5, 2};
        const int y[] = {0, 0, 1, 0, 1, 1, 0, 1};
        for (int i = 0; i < 8; ++i)
            f << nlohmann::json{{"id", "q" + std::to_string(i)},
                                {"correct", (bool)y[i]},
                                {"scores", {{"kv_coe_r", s[i]}, {"max_prob", s[7 - i] * 0.3}}}}
                     .dump()
              << "\n";
    }
    kvlens_calibrate_params p = kvlens_calibrate_default_params();
    p.from = from;
    p.method = "platt";
    p.features = {"kv_coe_r"};
    p.out_path = dir + "/cal.json";
    kvlens_calibration_info c;
    ASSERT_EQ(kvlens_calibrate(p, &c), KVLENS_OK) << kvlens_last_error();
    const kvlens::Calibration want =
        kvlens::fit_platt({-1, -0.5, 0, 0.2, 0.5, 1, 1.5, 2}, {0, 0, 1, 0, 1, 1, 0, 1});
    EXPECT_EQ(c.path, p.out_path);
    EXPECT_EQ(c.method, "platt");
    EXPECT_EQ(c.score, "kv_coe_r");
    EXPECT_EQ(c.n, 8);
    EXPECT_EQ(c.n_correct, 4);
    EXPECT_EQ(c.direction, want.direction);
    EXPECT_EQ(c.train_auroc, want.train_auroc);
    kvlens_calibration_info loaded;
    ASSERT_EQ(kvlens_calibration_load(p.out_path, &loaded), KVLENS_OK) << kvlens_last_error();
    EXPECT_EQ(loaded.score, "kv_coe_r");
    EXPECT_EQ(loaded.method, "platt");
    EXPECT_EQ(kvlens::load_calibration(p.out_path).a, want.a);

    p.method = "logistic";
    p.features = {"kv_coe_r", "max_prob"};
    p.name = "two";
    ASSERT_EQ(kvlens_calibrate(p, &c), KVLENS_OK) << kvlens_last_error();
    EXPECT_EQ(c.score, "combined:two");
    EXPECT_EQ(c.features, p.features);
    EXPECT_EQ(c.weights.size(), 2u);

    p.method = "cubic";
    EXPECT_EQ(kvlens_calibrate(p, &c), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("method: ", 0), 0u);
    p.method = "isotonic";  // one score only
    EXPECT_EQ(kvlens_calibrate(p, &c), KVLENS_ERR_INVALID_ARGUMENT);
    p.features = {"kv_coe_r"};
    p.out_path.clear();
    EXPECT_EQ(kvlens_calibrate(p, &c), KVLENS_ERR_INVALID_ARGUMENT);  // nowhere to save
    EXPECT_EQ(kvlens_calibration_load(dir + "/none.json", &loaded), KVLENS_ERR_FILE);
    EXPECT_EQ(loaded.score, "kv_coe_r");  // left alone
    std::filesystem::remove_all(dir);
}

TEST(PublicApi, EvaluationsRefuseBadParameters) {
    kvlens_eval_coe_params c = kvlens_eval_coe_default_params();
    EXPECT_EQ(c.parallel, 4);
    EXPECT_EQ(c.coe_layers, kvlens_session_default_params().coe_layers);
    EXPECT_EQ(c.data_dir, kvlens_data_dir());
    c.coe_kv_part = "q";
    EXPECT_EQ(kvlens_eval_coe(c), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("coe_kv_part: ", 0), 0u);
    kvlens_eval_sample_params s = kvlens_eval_sample_default_params();
    EXPECT_EQ(s.ns, (std::vector<int>{1, 4, 8}));
    s.part = "train";
    EXPECT_EQ(kvlens_eval_sample(s), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()), "part 'train': expected all, dev or test");
    const std::string out = temp_path("merge_out");
    std::filesystem::remove_all(out);
    EXPECT_EQ(kvlens_eval_merge({"/nonexistent/shard0"}, out, "kvlens eval merge"), KVLENS_ERR_RUNTIME);
    EXPECT_NE(std::string(kvlens_last_error()), "");
    std::filesystem::remove_all(out);
}

TEST(PublicApi, ServiceAnswersAsTheOpenAiApi) {
    kvlens_model* m = nullptr;
    ASSERT_EQ(kvlens_model_load(kLlama, kvlens_model_default_params(), &m), KVLENS_OK);
    const kvlens_model_ptr model(m);
    kvlens_service_params p = kvlens_service_default_params();
    EXPECT_EQ(p.session.n_ctx, 0);
    p.session.n_threads = 2;
    p.queue = 0;
    kvlens_service* sv = nullptr;
    ASSERT_EQ(kvlens_service_open(model.get(), p, &sv), KVLENS_OK) << kvlens_last_error();
    const kvlens_service_ptr service(sv);
    EXPECT_STREQ(kvlens_service_model_id(service.get()), "tiny-llama");
    EXPECT_EQ(kvlens_service_max_admitted(service.get()), 1);
    std::string out;
    ASSERT_EQ(kvlens_service_models(service.get(), &out), KVLENS_OK);
    EXPECT_EQ(nlohmann::json::parse(out)["data"][0]["id"], "tiny-llama");

    kvlens_request_error err;
    kvlens_chat_request* r = nullptr;
    const std::string body = R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5})";
    ASSERT_EQ(kvlens_service_parse_chat(service.get(), body, &r, &err), KVLENS_OK) << err.message;
    const kvlens_chat_request_ptr req(r);
    EXPECT_FALSE(kvlens_chat_request_stream(req.get()));
    ASSERT_EQ(kvlens_service_chat(service.get(), req.get(), {}, &out, &err), KVLENS_OK) << err.message;
    const nlohmann::json resp = nlohmann::json::parse(out);
    EXPECT_EQ(resp["object"], "chat.completion");
    EXPECT_LE(resp["kvlens"]["n_generated"].get<int>(), 5);
    EXPECT_TRUE(resp["kvlens"]["scores"].contains("kv_coe_r"));
    // Streamed: the same answer in chunks.
    std::vector<nlohmann::json> chunks;
    ASSERT_EQ(kvlens_service_chat(
                  service.get(), req.get(),
                  [&](const std::string& c) {
                      chunks.push_back(nlohmann::json::parse(c));
                      return true;
                  },
                  &out, &err),
              KVLENS_OK);
    ASSERT_FALSE(chunks.empty());
    EXPECT_EQ(chunks.back()["object"], "chat.completion.chunk");
    EXPECT_EQ(nlohmann::json::parse(out)["choices"], resp["choices"]);

    // Refusals name the parameter; text that is not JSON names the body.
    r = nullptr;
    EXPECT_EQ(kvlens_service_parse_chat(service.get(), R"({"messages": [], "max_tokens": 5})", &r, &err),
              KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(r, nullptr);
    EXPECT_EQ(err.http_status, 400);
    EXPECT_EQ(err.param, "messages");
    EXPECT_EQ(err.type, "invalid_request_error");
    EXPECT_EQ(kvlens_service_parse_chat(service.get(), "{oops", &r, &err), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(err.param, "body");
    EXPECT_EQ(err.message.rfind("request body: invalid JSON (", 0), 0u);

    ASSERT_EQ(kvlens_service_embeddings(service.get(), R"({"input": ["a", "b"]})", &out, &err), KVLENS_OK);
    EXPECT_EQ(nlohmann::json::parse(out)["data"].size(), 2u);
    EXPECT_EQ(kvlens_service_embeddings(service.get(), R"({"input": ["a", ""]})", &out, &err),
              KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(err.param, "input[1]");

    // The line: parallel 1 + queue 0 admits one.
    kvlens_admission* a = nullptr;
    ASSERT_EQ(kvlens_service_admit(service.get(), &a, &err), KVLENS_OK);
    const kvlens_admission_ptr first(a);
    kvlens_admission* b = nullptr;
    EXPECT_EQ(kvlens_service_admit(service.get(), &b, &err), KVLENS_ERR_BUSY);
    EXPECT_EQ(b, nullptr);
    EXPECT_EQ(err.http_status, 503);
    EXPECT_EQ(err.code, "overloaded");
    EXPECT_STREQ(kvlens_status_name(KVLENS_ERR_BUSY), "busy");

    // Shutdown: a completion stops at once with what it has (after its first token).
    kvlens_service_shutdown(service.get(), 0);
    ASSERT_EQ(kvlens_service_chat(service.get(), req.get(), {}, &out, &err), KVLENS_OK) << err.message;
    if (resp["kvlens"]["n_generated"] == 5) {
        EXPECT_EQ(nlohmann::json::parse(out)["kvlens"]["stop"], "shutdown");
    }

    kvlens_service_params bad = kvlens_service_default_params();
    bad.session.coe_head_agg = "max";
    EXPECT_EQ(kvlens_service_open(model.get(), bad, &sv), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("coe_head_agg: ", 0), 0u);
    bad = kvlens_service_default_params();
    bad.session.calibration_path = "/nonexistent/cal.json";
    EXPECT_EQ(kvlens_service_open(model.get(), bad, &sv), KVLENS_ERR_FILE);
}

TEST(PublicApi, EmbedEachReportsBadTextsAlone) {
    kvlens_session_params sp = two_threads();
    sp.n_seq_max = 4;
    Handles h = open(kLlama, sp);
    ASSERT_TRUE(h.session);
    kvlens_embed_params p = kvlens_embed_default_params();
    EXPECT_EQ(p.layer_agg, "mean");
    EXPECT_EQ(p.window, 0);
    EXPECT_EQ(kvlens_embed_params_check(p), KVLENS_OK);
    const std::vector<std::string> texts = {"hello world", " ", "a cat"};
    std::vector<kvlens_text_embedding> each;
    int width = 0;
    ASSERT_EQ(kvlens_embed_each(h.session.get(), texts, p, &each, &width), KVLENS_OK) << kvlens_last_error();
    ASSERT_EQ(each.size(), 3u);
    EXPECT_FALSE(each[1].ok);
    EXPECT_EQ(each[1].error, "empty text");
    // The good ones are kvlens_embed's vectors.
    kvlens_embeddings e;
    ASSERT_EQ(kvlens_embed(h.session.get(), {"hello world", "a cat"}, p, &e), KVLENS_OK);
    EXPECT_EQ(width, e.width);
    EXPECT_EQ(each[0].kv, std::vector<float>(e.data.begin(), e.data.begin() + e.width));
    EXPECT_EQ(each[2].kv, std::vector<float>(e.data.begin() + e.width, e.data.end()));
    EXPECT_GT(each[0].n_tokens, 1);
    EXPECT_TRUE(each[0].hidden.empty());
    // With the hidden state; with no text, only the width.
    p.hidden = true;
    ASSERT_EQ(kvlens_embed_each(h.session.get(), {"hello world"}, p, &each, &width), KVLENS_OK);
    kvlens_model_info info;
    ASSERT_EQ(kvlens_model_get_info(h.model.get(), &info), KVLENS_OK);
    EXPECT_EQ(each[0].hidden.size(), (size_t)info.n_embd);
    width = 0;
    ASSERT_EQ(kvlens_embed_each(h.session.get(), {}, p, &each, &width), KVLENS_OK);
    EXPECT_TRUE(each.empty());
    EXPECT_EQ(width, e.width);
    // layer_agg none: a vector per layer, concatenated.
    p.layer_agg = "none";
    p.layers = "all";
    ASSERT_EQ(kvlens_embed_each(h.session.get(), {"hello world"}, p, &each, &width), KVLENS_OK);
    EXPECT_EQ(each[0].kv.size(), (size_t)width);
    p.layer_agg = "median";
    EXPECT_EQ(kvlens_embed_params_check(p), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("layer_agg: ", 0), 0u);
    p = kvlens_embed_default_params();
    p.layers = "9";  // 2 layers: refused on the model, not by the check
    EXPECT_EQ(kvlens_embed_params_check(p), KVLENS_OK);
    EXPECT_EQ(kvlens_embed_each(h.session.get(), {"x"}, p, &each, &width), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("layers: ", 0), 0u);
}

TEST(PublicApi, RouterAndEmbedEvaluationsRefuseBadParameters) {
    const kvlens_router_label_params l = kvlens_router_label_default_params();
    EXPECT_EQ(l.preset, "32/8");
    EXPECT_EQ(l.long_tokens, 128);
    EXPECT_EQ(l.data_dir, kvlens_data_dir());
    kvlens_router_label_params bad_label = l;
    bad_label.model_path = "/nonexistent/model.gguf";
    bad_label.dataset = "arith";
    bad_label.out_dir = temp_path("router_label");
    EXPECT_NE(kvlens_router_label(bad_label), KVLENS_OK);
    EXPECT_NE(std::string(kvlens_last_error()), "");
    std::filesystem::remove_all(bad_label.out_dir);

    kvlens_router_train_params t = kvlens_router_train_default_params();
    EXPECT_EQ(t.preset, "tuned");
    EXPECT_EQ(t.windows, "prompt");
    t.preset = "fast";
    t.label_dirs = {"/nonexistent"};
    t.out_path = temp_path("router.json");
    EXPECT_EQ(kvlens_router_train(t), KVLENS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(std::string(kvlens_last_error()).rfind("preset: ", 0), 0u) << kvlens_last_error();

    const kvlens_router_eval_params e = kvlens_router_eval_default_params();
    const kvlens_generate_params g = kvlens_generate_default_params();
    EXPECT_EQ(e.check_every, g.check_every);
    EXPECT_EQ(e.route_threshold, g.route_threshold);
    EXPECT_EQ(e.switch_delta, g.switch_delta);
    EXPECT_TRUE(e.budgets.empty() && e.deer_thresholds.empty());
    EXPECT_EQ(e.deer_trial_tokens, g.deer_trial_tokens);
    for (auto bad : {std::make_pair(std::vector<int>{64, 0}, std::vector<float>{}),
                     std::make_pair(std::vector<int>{}, std::vector<float>{0.9f, -1.0f})}) {
        kvlens_router_eval_params be = e;
        be.budgets = bad.first;
        be.deer_thresholds = bad.second;
        EXPECT_EQ(kvlens_router_eval(be), KVLENS_ERR_INVALID_ARGUMENT);
        EXPECT_EQ(
            std::string(kvlens_last_error()).rfind(bad.first.empty() ? "deer_thresholds: " : "budgets: ", 0),
            0u)
            << kvlens_last_error();
    }

    kvlens_eval_embed_params m = kvlens_eval_embed_default_params();
    EXPECT_EQ(m.batch_seqs, 8);
    EXPECT_TRUE(m.hidden && m.random);
    m.tasks = {"/nonexistent/task.json"};
    m.out_dir = temp_path("eval_embed");
    EXPECT_NE(kvlens_eval_embed(m), KVLENS_OK);
    EXPECT_NE(std::string(kvlens_last_error()), "");
    std::filesystem::remove_all(m.out_dir);
}
