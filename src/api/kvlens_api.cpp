// The public API (include/kvlens/kvlens.h): a thin layer over the engine, the capture and the methods. It
// turns their exceptions into status codes and names, and runs the same internal calls with the same
// parameters as the CLI's generate / embed / dump, so that its results equal theirs exactly. It depends on
// nothing of the front ends (CLI, server, bindings); they may depend on it.
#include "kvlens/kvlens.h"

#include <cmath>
#include <exception>
#include <new>
#include <string>

#include "capture/dump.h"
#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "methods/calibration.h"
#include "methods/coe.h"
#include "methods/embed.h"
#include "methods/fast_slow.h"
#include "methods/router.h"
#include "util/error.h"

struct kvlens_model {
    explicit kvlens_model(const kvlens::ModelParams& p) : m(p) {}
    kvlens::Model m;
};

struct kvlens_session {
    kvlens_session(const kvlens::Model& model, const kvlens::SessionParams& p) : s(model, p) {}
    kvlens::Session s;
    kvlens::ChatTemplate tmpl = kvlens::ChatTemplate::Auto;  // resolved: never Auto
    kvlens::TokenCoeSpec coe;
    std::vector<kvlens::Calibration> cals;
    std::unique_ptr<kvlens::RouterFile> router;
};

namespace {

thread_local std::string g_last_error;

// An error with the status it is reported under; kvlens::Error escaping a step gets that step's status.
struct Failure {
    kvlens_status status;
    std::string message;
};

[[noreturn]] void fail(kvlens_status s, const std::string& message) {
    throw Failure{s, message};
}

// Runs f with every exception turned into a status: kvlens::Error into `on_error` (the status of what f does:
// reading a file, decoding, ...), Failure into its own.
template <typename F>
kvlens_status guarded(kvlens_status on_error, F f) noexcept {
    try {
        f();
        g_last_error.clear();
        return KVLENS_OK;
    } catch (const Failure& e) {
        g_last_error = e.message;
        return e.status;
    } catch (const kvlens::Error& e) {
        g_last_error = e.what();
        return on_error;
    } catch (const std::bad_alloc&) {
        g_last_error = "out of memory";
    } catch (const std::exception& e) {
        g_last_error = e.what();
    } catch (...) {
        g_last_error = "unknown error";
    }
    return KVLENS_ERR_INTERNAL;
}

// A parse of a named parameter: its Error becomes KVLENS_ERR_INVALID_ARGUMENT naming it.
template <typename F>
auto param(const char* name, F f) {
    try {
        return f();
    } catch (const kvlens::Error& e) {
        fail(KVLENS_ERR_INVALID_ARGUMENT, std::string(name) + ": " + e.what());
    }
}

void need(bool ok, const char* what) {
    if (!ok) fail(KVLENS_ERR_INVALID_ARGUMENT, what);
}

std::vector<llama_token> to_llama(const std::vector<int32_t>& t) {
    return {t.begin(), t.end()};
}
std::vector<int32_t> from_llama(const std::vector<llama_token>& t) {
    return {t.begin(), t.end()};
}

}  // namespace

const char* kvlens_status_name(kvlens_status status) {
    switch (status) {
        case KVLENS_OK:
            return "ok";
        case KVLENS_ERR_INVALID_ARGUMENT:
            return "invalid_argument";
        case KVLENS_ERR_FILE:
            return "file";
        case KVLENS_ERR_MODEL_MISMATCH:
            return "model_mismatch";
        case KVLENS_ERR_RUNTIME:
            return "runtime";
        case KVLENS_ERR_INTERNAL:
            return "internal";
    }
    return "unknown";
}

const char* kvlens_last_error() {
    return g_last_error.c_str();
}

const char* kvlens_version() {
    return KVLENS_VERSION;
}

// ---- model
// -------------------------------------------------------------------------------------------------

kvlens_model_params kvlens_model_default_params() {
    return {-1, false};
}

kvlens_status kvlens_model_load(const std::string& path, const kvlens_model_params& params,
                                kvlens_model** out) {
    return guarded(KVLENS_ERR_FILE, [&] {
        need(out != nullptr, "out: null");
        need(params.n_gpu_layers >= -1, "n_gpu_layers: must be >= -1");
        kvlens::set_verbose(params.verbose);
        *out = new kvlens_model(kvlens::ModelParams{path, params.n_gpu_layers});
    });
}

void kvlens_model_free(kvlens_model* model) {
    delete model;
}

kvlens_status kvlens_model_get_info(const kvlens_model* model, kvlens_model_info* out) {
    return guarded(KVLENS_ERR_INTERNAL, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        const kvlens::ModelInfo& mi = model->m.info();
        kvlens_model_info i;
        i.path = model->m.path();
        i.arch = mi.arch;
        i.name = mi.name;
        i.chat_template = kvlens::to_string(kvlens::detect_chat_template(mi.chat_template, mi.arch));
        i.n_layer = mi.n_layer;
        i.n_embd = mi.n_embd;
        i.n_head = mi.n_head;
        i.n_head_kv = mi.n_head_kv;
        i.head_dim = mi.head_dim;
        i.kv_width = mi.kv_width();
        i.n_ctx_train = mi.n_ctx_train;
        i.n_vocab = mi.n_vocab;
        *out = std::move(i);
    });
}

kvlens_status kvlens_tokenize(const kvlens_model* model, const std::string& text, bool add_special,
                              std::vector<int32_t>* out) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        *out = from_llama(model->m.tokenize(text, add_special, true));
    });
}

// ---- session
// -----------------------------------------------------------------------------------------------

kvlens_session_params kvlens_session_default_params() {
    const kvlens::TokenCoeSpec coe;
    kvlens_session_params p;
    p.n_ctx = 4096;
    p.n_batch = 512;
    p.n_seq_max = 1;
    p.n_threads = 0;
    p.flash_attn = KVLENS_FLASH_ATTN_AUTO;
    p.kv_source = KVLENS_KV_SOURCE_GRAPH;
    p.chat_template = "auto";
    p.coe_layers = coe.layers;
    p.coe_kv_part = kvlens::to_string(coe.kv_part);
    p.coe_positions = kvlens::to_string(coe.positions);
    p.coe_head_agg = kvlens::to_string(coe.head_agg);
    return p;
}

kvlens_status kvlens_session_open(const kvlens_model* model, const kvlens_session_params& params,
                                  kvlens_session** out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        need(params.n_ctx >= 1, "n_ctx: must be >= 1");
        need(params.n_batch >= 1, "n_batch: must be >= 1");
        need(params.n_seq_max >= 1, "n_seq_max: must be >= 1");
        need(params.n_threads >= 0, "n_threads: must be >= 0");
        need(params.flash_attn == KVLENS_FLASH_ATTN_AUTO || params.flash_attn == KVLENS_FLASH_ATTN_ON ||
                 params.flash_attn == KVLENS_FLASH_ATTN_OFF,
             "flash_attn: expected KVLENS_FLASH_ATTN_AUTO, _ON or _OFF");
        need(params.kv_source == KVLENS_KV_SOURCE_GRAPH || params.kv_source == KVLENS_KV_SOURCE_CACHE,
             "kv_source: expected KVLENS_KV_SOURCE_GRAPH or _CACHE");
        const kvlens::ModelInfo& mi = model->m.info();
        kvlens::ChatTemplate tmpl =
            param("chat_template", [&] { return kvlens::parse_chat_template(params.chat_template); });
        if (tmpl == kvlens::ChatTemplate::Auto)
            tmpl = kvlens::detect_chat_template(mi.chat_template, mi.arch);
        kvlens::TokenCoeSpec coe;
        param("coe_layers", [&] { return kvlens::parse_layers(params.coe_layers); });
        coe.layers = params.coe_layers;
        coe.kv_part = param("coe_kv_part", [&] { return kvlens::parse_kv_part(params.coe_kv_part); });
        coe.positions =
            param("coe_positions", [&] { return kvlens::parse_coe_positions(params.coe_positions); });
        coe.head_agg = param("coe_head_agg", [&] { return kvlens::parse_head_agg(params.coe_head_agg); });
        // Checked on the model now, so that a bad selection fails here and not in the first generation.
        param("coe_layers", [&] {
            const kvlens::TokenCoe probe(mi, 0, 1, coe);
            return probe.layers().size();
        });

        std::vector<kvlens::Calibration> cals;
        if (!params.calibration_path.empty()) {
            kvlens::Calibration c;
            try {
                c = kvlens::load_calibration(params.calibration_path);
            } catch (const kvlens::Error& e) {
                fail(KVLENS_ERR_FILE, std::string("calibration: ") + e.what());
            }
            try {
                kvlens::check_calibration_model(
                    c, kvlens::calibration_model_of(model->m.path(), mi.name, mi.arch, mi.n_layer));
            } catch (const kvlens::Error& e) {
                fail(KVLENS_ERR_MODEL_MISMATCH, std::string("calibration: ") + e.what());
            }
            cals.push_back(std::move(c));
        }
        std::unique_ptr<kvlens::RouterFile> router;
        if (!params.router_path.empty()) {
            try {
                router = std::make_unique<kvlens::RouterFile>(kvlens::load_router(params.router_path));
            } catch (const kvlens::Error& e) {
                fail(KVLENS_ERR_FILE, std::string("router: ") + e.what());
            }
            if (!kvlens::has_thinking(tmpl))
                fail(KVLENS_ERR_INVALID_ARGUMENT, std::string("router: chat template ") +
                                                      kvlens::to_string(tmpl) + " has no thinking mode");
            try {
                kvlens::check_router_for_model(*router, mi.arch, mi.n_layer, mi.n_head_kv, mi.head_dim,
                                               kvlens::to_string(tmpl));
            } catch (const kvlens::Error& e) {
                fail(KVLENS_ERR_MODEL_MISMATCH, std::string("router: ") + e.what());
            }
        }

        kvlens::SessionParams sp;
        sp.n_ctx = params.n_ctx;
        sp.n_batch = params.n_batch;
        sp.n_seq_max = params.n_seq_max;
        sp.n_threads = params.n_threads;
        sp.flash_attn = params.flash_attn == KVLENS_FLASH_ATTN_ON    ? kvlens::FlashAttn::On
                        : params.flash_attn == KVLENS_FLASH_ATTN_OFF ? kvlens::FlashAttn::Off
                                                                     : kvlens::FlashAttn::Auto;
        sp.capture_source = params.kv_source == KVLENS_KV_SOURCE_CACHE ? kvlens::CaptureSource::Cache
                                                                       : kvlens::CaptureSource::Graph;
        auto s = std::make_unique<kvlens_session>(model->m, sp);
        s->tmpl = tmpl;
        s->coe = coe;
        s->cals = std::move(cals);
        s->router = std::move(router);
        *out = s.release();
    });
}

void kvlens_session_free(kvlens_session* session) {
    delete session;
}

// ---- generation
// --------------------------------------------------------------------------------------------

kvlens_generate_params kvlens_generate_default_params() {
    const kvlens::SamplingParams sampling;
    const kvlens::RoutePolicy policy;
    kvlens_generate_params p;
    p.think = KVLENS_THINK_DEFAULT;
    p.raw = false;
    p.max_tokens = 256;
    p.temperature = sampling.temperature;
    p.top_k = sampling.top_k;
    p.top_p = sampling.top_p;
    p.seed = sampling.seed;
    p.scores = true;
    p.check_every = policy.check_every;
    p.route_threshold = policy.route_threshold;
    p.switch_delta = policy.delta;
    p.allow_switch = true;
    return p;
}

namespace {

// --think auto: as `kvlens generate --think auto` (cmd_generate.cpp's run_generate_routed).
void generate_routed(kvlens_session& s, const std::vector<kvlens::ChatMessage>& msgs,
                     const kvlens::SamplingParams& sampling, const kvlens_generate_params& p,
                     kvlens_generation& g) {
    need(s.router != nullptr, "think: KVLENS_THINK_AUTO needs a session opened with a router_path");
    need(!p.raw, "think: KVLENS_THINK_AUTO needs the chat template (not raw)");
    need(!p.scores, "scores: not available with KVLENS_THINK_AUTO (set scores = false)");
    need(p.check_every >= 1, "check_every: must be >= 1");
    need(std::isfinite(p.route_threshold) && p.route_threshold >= 0 && p.route_threshold <= 100,
         "route_threshold: must be in [0, 100]");
    need(std::isfinite(p.switch_delta) && p.switch_delta >= 0 && p.switch_delta <= 100,
         "switch_delta: must be in [0, 100]");
    kvlens::FastSlowParams fp;
    fp.start = kvlens::ThinkStart::Auto;
    fp.allow_switch = p.allow_switch;
    fp.policy.check_every = p.check_every;
    fp.policy.route_threshold = p.route_threshold;
    fp.policy.delta = p.switch_delta;
    fp.max_tokens = p.max_tokens;
    fp.sampling = sampling;
    s.s.clear();
    const kvlens::FastSlowResult r =
        kvlens::run_fast_slow(s.s, s.tmpl, msgs, s.router->features, &s.router->classifier, fp);
    g.text = r.text;
    g.prompt_tokens = from_llama(r.prompt);
    g.output_tokens = from_llama(r.tokens);
    g.stop = kvlens::to_string(r.stop);
    g.route_score = r.prompt_score;
    g.think_initial = kvlens::to_string(r.initial);
    g.think_final = kvlens::to_string(r.final);
    g.switch_at = r.switch_at;
    g.n_sampled = r.n_sampled;
    g.n_switch_tokens = r.n_switch_tokens;
    g.n_dropped = r.n_dropped;
    g.checks = r.checks;
    g.answer = r.answer;
}

}  // namespace

kvlens_status kvlens_generate(kvlens_session* session, const std::string& prompt,
                              const kvlens_generate_params& params, kvlens_generation* out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(session != nullptr, "session: null");
        need(out != nullptr, "out: null");
        need(!prompt.empty(), "prompt: empty");
        need(params.max_tokens >= 1, "max_tokens: must be >= 1");
        need(params.think >= KVLENS_THINK_DEFAULT && params.think <= KVLENS_THINK_AUTO,
             "think: expected KVLENS_THINK_DEFAULT, _ON, _OFF or _AUTO");
        kvlens::SamplingParams sampling;
        sampling.temperature = params.temperature;
        sampling.top_k = params.top_k;
        sampling.top_p = params.top_p;
        sampling.seed = params.seed;
        try {
            kvlens::check_sampling_params(sampling);  // its messages name the parameter
        } catch (const kvlens::Error& e) {
            fail(KVLENS_ERR_INVALID_ARGUMENT, e.what());
        }
        kvlens_session& s = *session;
        std::vector<kvlens::ChatMessage> msgs;
        if (!params.system.empty()) msgs.push_back({"system", params.system});
        msgs.push_back({"user", prompt});

        kvlens_generation g;
        if (params.think == KVLENS_THINK_AUTO) {
            generate_routed(s, msgs, sampling, params, g);
            *out = std::move(g);
            return;
        }
        const kvlens::ThinkMode think = params.think == KVLENS_THINK_ON    ? kvlens::ThinkMode::On
                                        : params.think == KVLENS_THINK_OFF ? kvlens::ThinkMode::Off
                                                                           : kvlens::ThinkMode::Default;
        const kvlens::Model& model = s.s.model();
        const std::string text =
            params.raw ? prompt : kvlens::render_chat(s.tmpl, msgs, /*add_assistant_prefix=*/true, think);
        const std::vector<llama_token> toks =
            model.tokenize(text, /*add_special=*/true, /*parse_special=*/!params.raw);

        s.s.clear();
        std::unique_ptr<kvlens::CoeScorer> scorer;
        if (params.scores) scorer = std::make_unique<kvlens::CoeScorer>(s.s, 0, (int)toks.size(), s.coe);
        kvlens::GenerateParams gp;
        gp.max_tokens = params.max_tokens;
        gp.sampling = sampling;
        const kvlens::Generation r = kvlens::generate(s.s, {toks}, gp).at(0);
        g.text = r.text;
        g.prompt_tokens = from_llama(r.prompt);
        g.output_tokens = from_llama(r.output);
        g.stop = kvlens::to_string(r.stop);
        if (scorer) {
            g.scores = scorer->result(r.steps).named();
            for (const auto& [k, v] : kvlens::calibrated_scores(g.scores, s.cals)) g.scores[k] = v;
        }
        *out = std::move(g);
    });
}

// ---- embeddings
// --------------------------------------------------------------------------------------------

kvlens_embed_params kvlens_embed_default_params() {
    const kvlens::PoolSpec preset = kvlens::embed_preset();
    kvlens_embed_params p;
    p.kv_part = kvlens::to_string(preset.kv_part);
    p.head_agg = kvlens::to_string(preset.head_agg);
    p.pos_agg = kvlens::to_string(preset.pos_agg);
    p.normalize = preset.normalize;
    return p;
}

kvlens_status kvlens_embed(kvlens_session* session, const std::vector<std::string>& texts,
                           const kvlens_embed_params& params, kvlens_embeddings* out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(session != nullptr, "session: null");
        need(out != nullptr, "out: null");
        const kvlens::ModelInfo& mi = session->s.model().info();
        kvlens::EmbedParams ep;
        ep.spec.kv_part = param("kv_part", [&] { return kvlens::parse_kv_part(params.kv_part); });
        ep.spec.head_agg = param("head_agg", [&] { return kvlens::parse_head_agg(params.head_agg); });
        ep.spec.pos_agg = param("pos_agg", [&] { return kvlens::parse_pos_agg(params.pos_agg); });
        ep.spec.normalize = params.normalize;
        if (params.layers.empty()) {  // the preset's last 4 layers, or all of a smaller model
            ep.spec.layers.clear();
            for (int l = -std::min(4, mi.n_layer); l < 0; ++l) ep.spec.layers.push_back(l);
        } else {
            ep.spec.layers = param("layers", [&] { return kvlens::parse_layers(params.layers); });
        }
        ep.batch_seqs = session->s.n_seq_max();
        for (size_t i = 0; i < texts.size(); ++i) {
            const std::string problem = kvlens::text_problem(texts[i]);
            if (!problem.empty())
                fail(KVLENS_ERR_INVALID_ARGUMENT, "texts[" + std::to_string(i) + "]: " + problem);
        }
        // The layer selection is checked against the model here.
        auto embedder = param("layers", [&] { return std::make_unique<kvlens::Embedder>(session->s, ep); });
        const std::vector<kvlens::Embedding> e = embedder->embed(texts);
        kvlens_embeddings r;
        r.n = (int)texts.size();
        r.width = embedder->kv_width();
        r.data.reserve((size_t)r.n * r.width);
        for (size_t i = 0; i < e.size(); ++i) {
            if (!e[i].ok)
                fail(KVLENS_ERR_INVALID_ARGUMENT, "texts[" + std::to_string(i) + "]: " + e[i].error);
            r.data.insert(r.data.end(), e[i].kv.begin(), e[i].kv.end());
        }
        *out = std::move(r);
    });
}

// ---- raw K/V
// -----------------------------------------------------------------------------------------------

kvlens_status kvlens_kv_of_tokens(kvlens_session* session, const std::vector<int32_t>& tokens, bool hidden,
                                  kvlens_kv* out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(session != nullptr, "session: null");
        need(out != nullptr, "out: null");
        need(!tokens.empty(), "tokens: empty");
        const int n_vocab = session->s.model().info().n_vocab;
        for (size_t i = 0; i < tokens.size(); ++i)
            if (tokens[i] < 0 || tokens[i] >= n_vocab)
                fail(KVLENS_ERR_INVALID_ARGUMENT,
                     "tokens[" + std::to_string(i) + "]: id " + std::to_string(tokens[i]) +
                         " outside the vocabulary of " + std::to_string(n_vocab));
        session->s.clear();
        kvlens::KvDump d = kvlens::dump_kv(session->s, to_llama(tokens), hidden);
        kvlens_kv r;
        r.n_layer = d.n_layer;
        r.n_tokens = d.n_tokens;
        r.kv_width = d.kv_width;
        r.n_embd = d.n_embd;
        r.tokens = tokens;
        r.k = std::move(d.k);
        r.v = std::move(d.v);
        r.hidden = std::move(d.hidden);
        *out = std::move(r);
    });
}

kvlens_status kvlens_kv_of_text(kvlens_session* session, const std::string& text, bool hidden,
                                kvlens_kv* out) {
    std::vector<int32_t> tokens;
    if (session == nullptr) return guarded(KVLENS_ERR_INVALID_ARGUMENT, [] { need(false, "session: null"); });
    const kvlens_status st = guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] {
        need(!text.empty(), "text: empty");
        tokens = from_llama(session->s.model().tokenize(text, /*add_special=*/true, /*parse_special=*/true));
    });
    if (st != KVLENS_OK) return st;
    return kvlens_kv_of_tokens(session, tokens, hidden, out);
}
