// The public API (include/kvlens/kvlens.h): a thin layer over the engine, the capture and the methods. It
// turns their exceptions into status codes and names, and runs the same internal calls with the same
// parameters as the CLI's generate / embed / dump, so that its results equal theirs exactly. It depends on
// nothing of the front ends (CLI, server, bindings); they may depend on it.
#include "kvlens/kvlens.h"

#include <chrono>
#include <cmath>
#include <exception>
#include <filesystem>
#include <functional>
#include <new>
#include <string>

#include "capture/dump.h"
#include "capture/observers.h"
#include "engine/batcher.h"
#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "eval/coe_eval.h"
#include "eval/embed_eval.h"
#include "eval/matchers.h"
#include "eval/merge.h"
#include "eval/router_eval.h"
#include "eval/sample_eval.h"
#include "eval/split.h"
#include "methods/calibration.h"
#include "methods/coe.h"
#include "methods/embed.h"
#include "methods/fast_slow.h"
#include "methods/router.h"
#include "methods/sampling.h"
#include "methods/selection.h"
#include "service/openai_api.h"
#include "util/data_dir.h"
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
        case KVLENS_ERR_BUSY:
            return "busy";
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
    return {-1, false, false};
}

kvlens_status kvlens_model_load(const std::string& path, const kvlens_model_params& params,
                                kvlens_model** out) {
    return guarded(KVLENS_ERR_FILE, [&] {
        need(out != nullptr, "out: null");
        need(params.n_gpu_layers >= -1, "n_gpu_layers: must be >= -1");
        kvlens::set_verbose(params.verbose);
        *out = new kvlens_model(kvlens::ModelParams{path, params.n_gpu_layers, params.batch_invariant});
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
        i.gguf_chat_template = mi.chat_template;
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
                              std::vector<int32_t>* out, bool parse_special) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        *out = from_llama(model->m.tokenize(text, add_special, parse_special));
    });
}

kvlens_status kvlens_detokenize(const kvlens_model* model, const std::vector<int32_t>& tokens,
                                bool render_special, std::string* out) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        *out = model->m.detokenize(to_llama(tokens), render_special);
    });
}

kvlens_status kvlens_parse_tokens(const kvlens_model* model, const std::string& list,
                                  std::vector<int32_t>* out) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        *out = from_llama(kvlens::parse_token_ids(list, model->m.info().n_vocab));
    });
}

// ---- chat templates
// ----------------------------------------------------------------------------------------

namespace {

kvlens::ThinkMode think_mode(kvlens_think t) {
    need(t == KVLENS_THINK_DEFAULT || t == KVLENS_THINK_ON || t == KVLENS_THINK_OFF,
         "think: expected KVLENS_THINK_DEFAULT, _ON or _OFF");
    return t == KVLENS_THINK_ON    ? kvlens::ThinkMode::On
           : t == KVLENS_THINK_OFF ? kvlens::ThinkMode::Off
                                   : kvlens::ThinkMode::Default;
}

std::vector<kvlens::ChatMessage> chat_messages(const std::vector<kvlens_chat_message>& messages) {
    std::vector<kvlens::ChatMessage> msgs;
    for (const kvlens_chat_message& m : messages) msgs.push_back({m.role, m.content});
    return msgs;
}

kvlens::ChatTemplate resolve_template(const kvlens::Model& m, const std::string& name) {
    const kvlens::ChatTemplate t = param("chat_template", [&] { return kvlens::parse_chat_template(name); });
    return t == kvlens::ChatTemplate::Auto
               ? kvlens::detect_chat_template(m.info().chat_template, m.info().arch)
               : t;
}

}  // namespace

kvlens_status kvlens_chat_render(const kvlens_model* model, const std::string& chat_template,
                                 const std::vector<kvlens_chat_message>& messages, kvlens_think think,
                                 bool add_assistant_prefix, std::string* out) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        const kvlens::ThinkMode mode = think_mode(think);
        *out = kvlens::render_chat(resolve_template(model->m, chat_template), chat_messages(messages),
                                   add_assistant_prefix, mode);
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
    p.kv_source = KVLENS_KV_SOURCE_CACHE;
    p.chat_template = "auto";
    p.coe_layers = coe.layers;
    p.coe_kv_part = kvlens::to_string(coe.kv_part);
    p.coe_positions = kvlens::to_string(coe.positions);
    p.coe_head_agg = kvlens::to_string(coe.head_agg);
    p.batch_invariant = false;
    p.capture = true;
    return p;
}

namespace {

// What a session's parameters give without a model: the engine's session, the chat template as named (Auto
// still unresolved) and the token-axis KV-CoE. The checks of kvlens_session_params_check, in its order.
struct SessionConfig {
    kvlens::SessionParams sp;
    kvlens::ChatTemplate tmpl = kvlens::ChatTemplate::Auto;
    kvlens::TokenCoeSpec coe;
};

SessionConfig session_config(const kvlens_session_params& params, int min_ctx = 1) {
    need(params.n_ctx >= min_ctx, min_ctx > 0 ? "n_ctx: must be >= 1" : "n_ctx: must be >= 0");
    need(params.n_batch >= 1, "n_batch: must be >= 1");
    need(params.n_seq_max >= 1, "n_seq_max: must be >= 1");
    need(params.n_threads >= 0, "n_threads: must be >= 0");
    need(params.flash_attn == KVLENS_FLASH_ATTN_AUTO || params.flash_attn == KVLENS_FLASH_ATTN_ON ||
             params.flash_attn == KVLENS_FLASH_ATTN_OFF,
         "flash_attn: expected KVLENS_FLASH_ATTN_AUTO, _ON or _OFF");
    need(params.kv_source == KVLENS_KV_SOURCE_GRAPH || params.kv_source == KVLENS_KV_SOURCE_CACHE,
         "kv_source: expected KVLENS_KV_SOURCE_GRAPH or _CACHE");
    need(!(params.batch_invariant && params.flash_attn == KVLENS_FLASH_ATTN_OFF),
         "batch_invariant: needs flash attention, which flash_attn turns off");
    SessionConfig c;
    c.tmpl = param("chat_template", [&] { return kvlens::parse_chat_template(params.chat_template); });
    param("coe_layers", [&] { return kvlens::parse_layers(params.coe_layers); });
    c.coe.layers = params.coe_layers;
    c.coe.kv_part = param("coe_kv_part", [&] { return kvlens::parse_kv_part(params.coe_kv_part); });
    c.coe.positions =
        param("coe_positions", [&] { return kvlens::parse_coe_positions(params.coe_positions); });
    c.coe.head_agg = param("coe_head_agg", [&] { return kvlens::parse_head_agg(params.coe_head_agg); });
    c.sp.n_ctx = params.n_ctx;
    c.sp.n_batch = params.n_batch;
    c.sp.n_seq_max = params.n_seq_max;
    c.sp.n_threads = params.n_threads;
    c.sp.flash_attn = params.flash_attn == KVLENS_FLASH_ATTN_ON    ? kvlens::FlashAttn::On
                      : params.flash_attn == KVLENS_FLASH_ATTN_OFF ? kvlens::FlashAttn::Off
                                                                   : kvlens::FlashAttn::Auto;
    c.sp.capture_source = params.kv_source == KVLENS_KV_SOURCE_CACHE ? kvlens::CaptureSource::Cache
                                                                     : kvlens::CaptureSource::Graph;
    c.sp.batch_invariant = params.batch_invariant;
    c.sp.capture = params.capture;
    return c;
}

void need_batch_invariant_model(const kvlens_model& model, const kvlens_session_params& params) {
    if (params.batch_invariant && !model.m.batch_invariant())
        fail(KVLENS_ERR_INVALID_ARGUMENT,
             "batch_invariant: the model was loaded without it (its weights are repacked for batched "
             "kernels); "
             "load it with kvlens_model_params.batch_invariant too");
}

}  // namespace

kvlens_status kvlens_session_params_check(const kvlens_session_params& params) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] { session_config(params); });
}

kvlens_status kvlens_session_open(const kvlens_model* model, const kvlens_session_params& params,
                                  kvlens_session** out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        const SessionConfig cfg = session_config(params);
        const kvlens::TokenCoeSpec& coe = cfg.coe;
        const kvlens::ModelInfo& mi = model->m.info();
        need_batch_invariant_model(*model, params);
        kvlens::ChatTemplate tmpl = cfg.tmpl;
        if (tmpl == kvlens::ChatTemplate::Auto)
            tmpl = kvlens::detect_chat_template(mi.chat_template, mi.arch);
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

        auto s = std::make_unique<kvlens_session>(model->m, cfg.sp);
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

std::string kvlens_default_calibration_path(const std::string& model_path, const std::string& score) {
    return kvlens::default_calibration_path(model_path, score);
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
    const kvlens::ThinkExitPolicy ex;
    p.think_budget = 256;
    p.deer_threshold = ex.threshold;
    p.deer_trial_tokens = ex.trial_max_tokens;
    p.features = false;
    p.feature_positions = "generated";
    p.feature_kv_part = "kv_cat";
    p.feature_pos_agg = "mean";
    p.feature_head_agg = "flatten";
    p.feature_layer_agg = "none";
    p.feature_layers = "all";
    p.feature_normalize = false;
    p.feature_window = 0;
    return p;
}

kvlens_status kvlens_think_parse(const std::string& name, kvlens_generate_params* params) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] {
        need(params != nullptr, "params: null");
        kvlens_generate_params& p = *params;
        if (name == "default" || name == "on" || name == "off" || name == "auto") {
            p.think = name == "default" ? KVLENS_THINK_DEFAULT
                      : name == "on"    ? KVLENS_THINK_ON
                      : name == "off"   ? KVLENS_THINK_OFF
                                        : KVLENS_THINK_AUTO;
            return;
        }
        const kvlens::ThinkExitPolicy ex = param("think", [&] { return kvlens::parse_think_exit(name); });
        if (ex.kind == kvlens::ThinkExit::None)
            fail(KVLENS_ERR_INVALID_ARGUMENT,
                 "think: '" + name + "': unknown (known: default, on, off, auto, budget:N, deer[:T])");
        if (ex.kind == kvlens::ThinkExit::Budget) {
            p.think = KVLENS_THINK_BUDGET;
            p.think_budget = ex.budget;
        } else {
            p.think = KVLENS_THINK_DEER;
            if (name != "deer") p.deer_threshold = ex.threshold;
        }
    });
}

namespace {

// The think policy as kvlens_think_parse reads it.
std::string think_policy_name(const kvlens_generate_params& p) {
    switch (p.think) {
        case KVLENS_THINK_DEFAULT:
            return "default";
        case KVLENS_THINK_ON:
            return "on";
        case KVLENS_THINK_OFF:
            return "off";
        case KVLENS_THINK_AUTO:
            return "auto";
        case KVLENS_THINK_BUDGET:
            return "budget:" + std::to_string(p.think_budget);
        case KVLENS_THINK_DEER: {
            kvlens::ThinkExitPolicy ex;
            ex.kind = kvlens::ThinkExit::Deer;
            ex.threshold = p.deer_threshold;
            return kvlens::to_string(ex);
        }
    }
    return "?";
}

// --think auto, budget:N, deer[:T]: as `kvlens generate --think ...` (cmd_generate.cpp's
// run_generate_routed).
void generate_routed(kvlens_session& s, const std::vector<kvlens::ChatMessage>& msgs,
                     const kvlens::SamplingParams& sampling, const kvlens_generate_params& p,
                     kvlens_generation& g) {
    const bool routed = p.think == KVLENS_THINK_AUTO;
    const std::string mode = routed                           ? "KVLENS_THINK_AUTO"
                             : p.think == KVLENS_THINK_BUDGET ? "KVLENS_THINK_BUDGET"
                                                              : "KVLENS_THINK_DEER";
    if (routed)
        need(s.router != nullptr, "think: KVLENS_THINK_AUTO needs a session opened with a router_path");
    if (p.raw) fail(KVLENS_ERR_INVALID_ARGUMENT, "think: " + mode + " needs the chat template (not raw)");
    if (p.scores)
        fail(KVLENS_ERR_INVALID_ARGUMENT, "scores: not available with " + mode + " (set scores = false)");
    if (p.features) fail(KVLENS_ERR_INVALID_ARGUMENT, "features: not available with " + mode);
    need(kvlens::has_thinking(s.tmpl), "think: the session's chat template has no thinking mode");
    need(p.check_every >= 1, "check_every: must be >= 1");
    need(std::isfinite(p.route_threshold) && p.route_threshold >= 0 && p.route_threshold <= 100,
         "route_threshold: must be in [0, 100]");
    need(std::isfinite(p.switch_delta) && p.switch_delta >= 0 && p.switch_delta <= 100,
         "switch_delta: must be in [0, 100]");
    kvlens::FastSlowParams fp;
    fp.start = routed ? kvlens::ThinkStart::Auto : kvlens::ThinkStart::Slow;
    fp.allow_switch = routed && p.allow_switch;
    if (p.think == KVLENS_THINK_BUDGET) {
        need(p.think_budget >= 1, "think_budget: must be >= 1");
        fp.exit.kind = kvlens::ThinkExit::Budget;
        fp.exit.budget = p.think_budget;
    } else if (p.think == KVLENS_THINK_DEER) {
        need(std::isfinite(p.deer_threshold) && p.deer_threshold >= 0, "deer_threshold: must be >= 0");
        need(p.deer_trial_tokens >= 1, "deer_trial_tokens: must be >= 1");
        need(s.s.n_seq_max() >= 2,
             "think: KVLENS_THINK_DEER needs a session with n_seq_max >= 2 (its trials)");
        fp.exit.kind = kvlens::ThinkExit::Deer;
        fp.exit.threshold = p.deer_threshold;
        fp.exit.trial_max_tokens = p.deer_trial_tokens;
    }
    fp.policy.check_every = p.check_every;
    fp.policy.route_threshold = p.route_threshold;
    fp.policy.delta = p.switch_delta;
    fp.max_tokens = p.max_tokens;
    fp.sampling = sampling;
    s.s.clear();
    const kvlens::RouterFeatures features = routed ? s.router->features : kvlens::RouterFeatures{32, 8};
    const kvlens::FastSlowResult r =
        kvlens::run_fast_slow(s.s, s.tmpl, msgs, features, routed ? &s.router->classifier : nullptr, fp);
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
    g.think_exit = r.exit;
    g.n_think_tokens = r.n_think;
    g.n_answer_tokens = r.n_answer;
    g.n_trial_tokens = r.n_trial;
    g.n_trials = r.n_trials;
    g.n_decode_calls = r.n_decode_calls;
    g.wall_ms = r.wall_ms;
}

// The cost fields of a plain generation: its output split at the end of the think block (which the prompt
// or the output opened).
void plain_cost(const kvlens::Model& model, const std::vector<llama_token>& output, bool prompt_opens_think,
                kvlens_generation& g) {
    std::string text;
    bool open = prompt_opens_think;
    int close_at = -1;
    for (size_t i = 0; i < output.size() && close_at < 0; ++i) {
        text += model.detokenize({output[i]}, true);
        if (text.find("<think>") != std::string::npos) open = true;
        if (open && text.find("</think>") != std::string::npos) close_at = (int)i + 1;
    }
    if (close_at >= 0) g.think_exit = "model";
    g.n_think_tokens = close_at >= 0 ? close_at : open ? (int)output.size() : 0;
    g.n_answer_tokens = (int)output.size() - g.n_think_tokens;
}

}  // namespace

namespace {

kvlens::PoolSpec feature_spec(const kvlens_generate_params& p) {
    kvlens::PoolSpec spec;
    spec.kv_part = param("feature_kv_part", [&] { return kvlens::parse_kv_part(p.feature_kv_part); });
    spec.pos_agg = param("feature_pos_agg", [&] { return kvlens::parse_pos_agg(p.feature_pos_agg); });
    spec.head_agg = param("feature_head_agg", [&] { return kvlens::parse_head_agg(p.feature_head_agg); });
    spec.layer_agg = param("feature_layer_agg", [&] { return kvlens::parse_layer_agg(p.feature_layer_agg); });
    spec.layers = param("feature_layers", [&] { return kvlens::parse_layers(p.feature_layers); });
    spec.normalize = p.feature_normalize;
    need(p.feature_window >= 0, "feature_window: must be >= 0");
    spec.window = p.feature_window;
    const std::string& w = p.feature_positions;
    need(w == "generated" || w == "producer" || w == "prompt" || w == "all",
         "feature_positions: expected generated, producer, prompt or all");
    return spec;
}

// Which positions the features pool: all of them, the prompt, the generated tokens that were fed back, or
// the producer positions (last prompt token + fed-back generated tokens: the forward passes that produced
// an output token, as KV-CoE uses).
std::pair<llama_pos, llama_pos> position_range(const std::string& which, llama_pos n_prompt) {
    if (which == "all") return {0, INT32_MAX};
    if (which == "prompt") return {0, n_prompt};
    if (which == "producer") return {n_prompt - 1, INT32_MAX};
    return {n_prompt, INT32_MAX};  // generated
}

}  // namespace

kvlens_status kvlens_generate_params_check(const kvlens_generate_params& params) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] {
        if (params.features) feature_spec(params);
    });
}

kvlens_status kvlens_generate(kvlens_session* session, const std::string& prompt,
                              const kvlens_generate_params& params, kvlens_generation* out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(session != nullptr, "session: null");
        need(out != nullptr, "out: null");
        need(!prompt.empty(), "prompt: empty");
        need(params.max_tokens >= 1, "max_tokens: must be >= 1");
        need(params.think >= KVLENS_THINK_DEFAULT && params.think <= KVLENS_THINK_DEER,
             "think: expected KVLENS_THINK_DEFAULT, _ON, _OFF, _AUTO, _BUDGET or _DEER");
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
        const char* needs_capture = params.scores                       ? "scores"
                                    : params.features                   ? "features"
                                    : params.think >= KVLENS_THINK_AUTO ? "think"
                                                                        : nullptr;
        if (needs_capture && !s.s.capture().accepts_observers())
            fail(KVLENS_ERR_INVALID_ARGUMENT, std::string(needs_capture) +
                                                  ": needs capture, and the session was opened with "
                                                  "kvlens_session_params.capture = false");
        std::vector<kvlens::ChatMessage> msgs;
        if (!params.system.empty()) msgs.push_back({"system", params.system});
        msgs.push_back({"user", prompt});

        kvlens_generation g;
        g.think_policy = think_policy_name(params);
        if (params.think >= KVLENS_THINK_AUTO) {
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
        std::unique_ptr<kvlens::KvPool> pool;
        std::unique_ptr<kvlens::PoolObserver> obs;
        if (params.features) {
            const kvlens::PoolSpec spec = feature_spec(params);
            const kvlens::ModelInfo& mi = model.info();
            pool = param("feature_layers", [&] {
                return std::make_unique<kvlens::KvPool>(spec, mi.n_layer, mi.n_head_kv, mi.head_dim);
            });
            const auto [p0, p1] = position_range(params.feature_positions, (llama_pos)toks.size());
            obs = std::make_unique<kvlens::PoolObserver>(*pool, 0, p0, p1);
        }
        // The observer leaves the capture however this ends.
        struct Unsubscribe {
            kvlens::Session& session;
            kvlens::KvObserver* obs;
            ~Unsubscribe() {
                if (obs) session.capture().unsubscribe(obs);
            }
        } unsubscribe{s.s, obs.get()};
        if (obs) s.s.capture().subscribe(obs.get());
        std::unique_ptr<kvlens::CoeScorer> scorer;
        if (params.scores) scorer = std::make_unique<kvlens::CoeScorer>(s.s, 0, (int)toks.size(), s.coe);
        kvlens::GenerateParams gp;
        gp.max_tokens = params.max_tokens;
        gp.sampling = sampling;
        const auto t0 = std::chrono::steady_clock::now();
        const int64_t calls0 = s.s.n_decode_calls();
        const kvlens::Generation r = kvlens::generate(s.s, {toks}, gp).at(0);
        g.n_decode_calls = s.s.n_decode_calls() - calls0;
        g.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        const size_t open_at = text.rfind("<think>");
        plain_cost(model, r.output,
                   !params.raw && open_at != std::string::npos &&
                       text.find("</think>", open_at) == std::string::npos,
                   g);
        g.text = r.text;
        g.prompt_tokens = from_llama(r.prompt);
        g.output_tokens = from_llama(r.output);
        g.stop = kvlens::to_string(r.stop);
        if (scorer) {
            const kvlens::CoeResult c = scorer->result(r.steps, r.output);
            g.scores = c.named();
            for (const auto& [k, v] : kvlens::calibrated_scores(g.scores, s.cals)) g.scores[k] = v;
            g.coe_layers = scorer->token().layers();
            g.coe_n_states = scorer->token().count();
            g.coe_m = c.kv.m;
            g.coe_a = c.kv.a;
            g.coe_status = kvlens::coe_status_string(c.kv.status);
        }
        if (pool) {
            kvlens::Pooled f = pool->result();
            g.feature_width = f.width;
            g.feature_n_vectors = f.n_vectors;
            g.feature_data = std::move(f.data);
            g.feature_layers = pool->layers();
            g.feature_n_positions = pool->count();
        }
        *out = std::move(g);
    });
}

// ---- scoring a given answer
// -------------------------------------------------------------------------------------

kvlens_score_params kvlens_score_default_params() {
    return {KVLENS_THINK_DEFAULT, true};
}

kvlens_status kvlens_score_answer(kvlens_session* session, const std::vector<kvlens_chat_message>& messages,
                                  const std::string& answer, const kvlens_score_params& params,
                                  kvlens_answer_scores* out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(session != nullptr, "session: null");
        need(out != nullptr, "out: null");
        need(!messages.empty(), "messages: no messages");
        const kvlens::ThinkMode mode = think_mode(params.think);
        kvlens_session& s = *session;
        const kvlens::Model& model = s.s.model();
        const std::vector<llama_token> prompt =
            model.tokenize(kvlens::render_chat(s.tmpl, chat_messages(messages), true, mode), true, true);
        // The answer as the model would have produced it after the prompt, closed by the template's
        // end-of-turn token as a generation that stops by itself is (that token is scored too).
        std::vector<llama_token> forced = model.tokenize(answer, false, true);
        if (params.end_of_turn)
            for (const std::string& eot : kvlens::end_of_turn_texts(s.tmpl)) {
                const std::vector<llama_token> e = model.tokenize(eot, false, true);
                if (e.size() == 1 && model.is_eog(e[0])) {
                    forced.push_back(e[0]);
                    break;
                }
            }
        need(!forced.empty(), "answer: empty answer");
        s.s.clear();
        kvlens::CoeScorer scorer(s.s, 0, (int)prompt.size(), s.coe);
        kvlens::Batcher batcher(s.s, false);
        batcher.join(0, prompt, (int)forced.size(), kvlens::make_sampler({}, 0), {}, forced);
        kvlens::Generation g;
        while (!batcher.empty())
            for (kvlens::Generation& done : batcher.step()) g = std::move(done);
        kvlens_answer_scores r;
        r.scores = scorer.result(g.steps, g.output).named();
        r.n_prompt = (int)prompt.size();
        r.tokens = from_llama(g.output);
        r.stop = kvlens::to_string(g.stop);
        *out = std::move(r);
    });
}

// ---- N samples, one answer chosen
// --------------------------------------------------------------------------------------

kvlens_sample_params kvlens_sample_default_params() {
    kvlens_sample_params p;
    p.think = KVLENS_THINK_DEFAULT;
    p.n = 4;
    p.max_tokens = 256;
    p.temperature = 0.7f;
    p.top_k = 0;
    p.top_p = 0.95f;
    p.seed = 0;
    p.matcher = "last_number";
    p.strategy = "majority";
    p.score = "hs_coe_c";
    p.abstain_below = -1;
    return p;
}

namespace {

struct SampleConfig {
    kvlens::MatcherKind matcher;
    kvlens::Strategy strategy;
    kvlens::SamplingParams sampling;
};

SampleConfig sample_config(const kvlens_sample_params& p) {
    SampleConfig c;
    c.matcher = param("matcher", [&] { return kvlens::parse_matcher(p.matcher); });
    c.strategy = param("strategy", [&] { return kvlens::parse_strategy(p.strategy); });
    c.sampling.temperature = p.temperature;
    c.sampling.top_k = p.top_k;
    c.sampling.top_p = p.top_p;
    c.sampling.seed = p.seed;
    param("sampling", [&] {
        kvlens::check_sampling_params(c.sampling);  // its messages name the parameter
        return 0;
    });
    need(p.n >= 1, "n: must be >= 1");
    need(p.max_tokens >= 1, "max_tokens: must be >= 1");
    return c;
}

}  // namespace

kvlens_status kvlens_sample_params_check(const kvlens_sample_params& params) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] { sample_config(params); });
}

kvlens_status kvlens_sample_n(kvlens_session* session, const std::string& prompt,
                              const kvlens_sample_params& params, kvlens_samples* out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(session != nullptr, "session: null");
        need(out != nullptr, "out: null");
        need(!prompt.empty(), "prompt: empty");
        const SampleConfig cfg = sample_config(params);
        const kvlens::ThinkMode mode = think_mode(params.think);
        kvlens_session& s = *session;
        need(params.n <= s.s.n_seq_max(), "n: more samples than the session's n_seq_max");
        const std::vector<kvlens::Calibration>& cals = s.cals;
        // The calibration decides the score.
        const std::string score = cals.empty() ? params.score : cals[0].score;
        if (cfg.strategy == kvlens::Strategy::WeightedVote && cals.empty())
            fail(KVLENS_ERR_INVALID_ARGUMENT,
                 "strategy weighted: needs a calibration (votes are weighted by calibrated probabilities)");
        std::vector<kvlens::ChatMessage> msgs;
        if (!params.system.empty()) msgs.push_back({"system", params.system});
        msgs.push_back({"user", prompt});
        const kvlens::Model& model = s.s.model();
        const std::vector<llama_token> toks =
            model.tokenize(kvlens::render_chat(s.tmpl, msgs, true, mode), true, true);

        s.s.clear();
        kvlens::SampleParams sp;
        sp.token_coe = s.coe;
        sp.n = params.n;
        sp.max_tokens = params.max_tokens;
        sp.sampling = cfg.sampling;
        const kvlens::SampleSet set = kvlens::sample_n(s.s, toks, sp);

        kvlens_samples r;
        r.score = score;
        std::vector<kvlens::Candidate> cands;
        for (int i = 0; i < params.n; ++i) {
            const kvlens::SampleOut& so = set.samples[i];
            const kvlens::MatchResult m = kvlens::match_answer(cfg.matcher, so.gen.text, params.reference);
            auto it = so.scores.find(score);
            if (cals.empty() && it == so.scores.end())
                fail(KVLENS_ERR_INVALID_ARGUMENT, "score '" + score + "': no such score");
            kvlens_sample x;
            x.text = so.gen.text;
            x.extracted = m.extracted;
            x.stop = kvlens::to_string(so.gen.stop);
            x.n_output_tokens = (int)so.gen.output.size();
            x.scores = so.scores;
            x.p_correct = kvlens::calibrated_scores(so.scores, cals);
            x.selection_score =
                cals.empty() ? it->second : cals[0].apply(so.scores);  // a logistic one reads several
            x.correct =
                !params.reference.empty() && m.correct && so.gen.stop == kvlens::StopReason::EndOfTurn;
            cands.push_back({m.extracted, x.selection_score});
            r.samples.push_back(std::move(x));
        }
        const kvlens::Choice ch = kvlens::select_answer(cfg.strategy, cands);
        r.chosen = ch.index;
        r.answer = ch.answer;
        r.confidence = ch.confidence;
        r.votes = ch.votes;
        r.abstained = params.abstain_below >= 0 && !kvlens::answers(ch.confidence, params.abstain_below);
        *out = std::move(r);
    });
}

// ---- calibration files
// ---------------------------------------------------------------------------------------

namespace {

kvlens_calibration_info info_of(const kvlens::Calibration& c) {
    kvlens_calibration_info i;
    i.path = c.path;
    i.method = kvlens::to_string(c.method);
    i.score = c.score;
    i.direction = c.direction;
    i.features = c.features;
    i.mean = c.mean;
    i.sd = c.sd;
    i.weights = c.w;
    i.bias = c.bias;
    i.ridge = c.ridge;
    i.n = c.n;
    i.n_correct = c.n_correct;
    i.train_auroc = c.train_auroc;
    i.part = c.part;
    i.model = c.model.empty() ? "" : c.model.describe();
    return i;
}

}  // namespace

kvlens_status kvlens_calibration_load(const std::string& path, kvlens_calibration_info* out) {
    return guarded(KVLENS_ERR_FILE, [&] {
        need(out != nullptr, "out: null");
        *out = info_of(kvlens::load_calibration(path));
    });
}

kvlens_calibrate_params kvlens_calibrate_default_params() {
    kvlens_calibrate_params p;
    p.method = "isotonic";
    p.part = "all";
    p.ridge = 1.0;
    return p;
}

kvlens_status kvlens_calibrate(const kvlens_calibrate_params& params, kvlens_calibration_info* out) {
    return guarded(KVLENS_ERR_FILE, [&] {
        need(out != nullptr, "out: null");
        need(!params.out_path.empty() || !params.model_path.empty(), "out_path: give it or model_path");
        const kvlens::CalibrationMethod m =
            param("method", [&] { return kvlens::parse_calibration_method(params.method); });
        const bool logistic = m == kvlens::CalibrationMethod::Logistic;
        need(!params.features.empty(), "features: no scores to calibrate");
        need(logistic || params.features.size() == 1, "features: isotonic and platt calibrate one score");
        const std::string& part = params.part;
        need(part == "dev" || part == "test" || part == "all", "part: expected dev, test or all");
        std::function<bool(const std::string&)> keep;
        if (part != "all")
            keep = [&](const std::string& id) { return kvlens::part_name(kvlens::split_part(id)) == part; };
        const kvlens::LabelledRows data = kvlens::read_labelled_rows(params.from, params.features, keep);

        kvlens::Calibration c;
        if (logistic) {
            c = kvlens::fit_logistic(params.features, data.rows, data.labels, params.ridge,
                                     params.name.empty() ? "combined" : "combined:" + params.name);
        } else {
            std::vector<double> x;
            for (const auto& row : data.rows) x.push_back(row[0]);
            c = kvlens::fit_calibration(m, x, data.labels);
            c.score = params.features[0];
        }
        c.source = params.from;
        if (logistic || part != "all") c.part = part;
        // The model it is for: the training run's (run.json beside the labels), else the one it is saved next
        // to.
        c.model = kvlens::read_run_model(std::filesystem::path(params.from).parent_path().string());
        if (!params.model_path.empty()) {
            const kvlens::CalibrationModel target =
                kvlens::calibration_model_of(params.model_path, "", "", 0);
            try {
                kvlens::check_calibration_model(c, target);
            } catch (const kvlens::Error& e) {
                fail(KVLENS_ERR_MODEL_MISMATCH, std::string("model_path: ") + e.what());
            }
            if (c.model.empty()) c.model = target;
        }
        const std::string path = params.out_path.empty()
                                     ? kvlens::default_calibration_path(params.model_path, c.score)
                                     : params.out_path;
        kvlens::save_calibration(c, path);
        c.path = path;
        kvlens_calibration_info i = info_of(c);
        i.n_lines = data.n_lines;
        i.n_skipped = data.n_skipped;
        *out = std::move(i);
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
    p.layer_agg = kvlens::to_string(preset.layer_agg);
    p.normalize = preset.normalize;
    p.window = preset.window;
    p.hidden = false;
    return p;
}

namespace {

// The pooling of kvlens_embed_params without the layers (which "" makes the model's to choose).
kvlens::EmbedParams embed_pooling(const kvlens_embed_params& params) {
    kvlens::EmbedParams ep;
    ep.spec.kv_part = param("kv_part", [&] { return kvlens::parse_kv_part(params.kv_part); });
    ep.spec.head_agg = param("head_agg", [&] { return kvlens::parse_head_agg(params.head_agg); });
    ep.spec.pos_agg = param("pos_agg", [&] { return kvlens::parse_pos_agg(params.pos_agg); });
    ep.spec.layer_agg = param("layer_agg", [&] { return kvlens::parse_layer_agg(params.layer_agg); });
    ep.spec.normalize = params.normalize;
    need(params.window >= 0, "window: must be >= 0");
    ep.spec.window = params.window;
    if (!params.layers.empty())
        ep.spec.layers = param("layers", [&] { return kvlens::parse_layers(params.layers); });
    ep.hidden = params.hidden;
    return ep;
}

kvlens::EmbedParams embed_params(const kvlens_session& s, const kvlens_embed_params& params) {
    const kvlens::ModelInfo& mi = s.s.model().info();
    kvlens::EmbedParams ep = embed_pooling(params);
    if (params.layers.empty()) {  // the preset's last 4 layers, or all of a smaller model
        ep.spec.layers.clear();
        for (int l = -std::min(4, mi.n_layer); l < 0; ++l) ep.spec.layers.push_back(l);
    }
    ep.batch_seqs = s.s.n_seq_max();
    return ep;
}

}  // namespace

kvlens_status kvlens_embed_params_check(const kvlens_embed_params& params) {
    return guarded(KVLENS_ERR_INVALID_ARGUMENT, [&] { embed_pooling(params); });
}

kvlens_status kvlens_embed_each(kvlens_session* session, const std::vector<std::string>& texts,
                                const kvlens_embed_params& params, std::vector<kvlens_text_embedding>* out,
                                int* width) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(session != nullptr, "session: null");
        need(out != nullptr, "out: null");
        const kvlens::EmbedParams ep = embed_params(*session, params);
        // The layer selection is checked against the model here.
        auto embedder = param("layers", [&] { return std::make_unique<kvlens::Embedder>(session->s, ep); });
        std::vector<kvlens::Embedding> e = embedder->embed(texts);
        std::vector<kvlens_text_embedding> r(e.size());
        for (size_t i = 0; i < e.size(); ++i) {
            r[i].ok = e[i].ok;
            r[i].error = std::move(e[i].error);
            r[i].n_tokens = e[i].n_tokens;
            r[i].kv = std::move(e[i].kv);
            r[i].hidden = std::move(e[i].hidden);
        }
        if (width) *width = embedder->kv_width();
        *out = std::move(r);
    });
}

kvlens_status kvlens_embed(kvlens_session* session, const std::vector<std::string>& texts,
                           const kvlens_embed_params& params, kvlens_embeddings* out) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        need(session != nullptr, "session: null");
        need(out != nullptr, "out: null");
        kvlens::EmbedParams ep = embed_params(*session, params);
        ep.hidden = false;
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
                                  kvlens_kv* out, int decode_from) {
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
        need(decode_from >= 0, "decode_from: must be >= 0");
        if (decode_from > (int)tokens.size())
            fail(KVLENS_ERR_INVALID_ARGUMENT, "decode_from: " + std::to_string(decode_from) +
                                                  " is more than the " + std::to_string(tokens.size()) +
                                                  " tokens");
        session->s.clear();
        kvlens::KvDump d = kvlens::dump_kv(session->s, to_llama(tokens), hidden, decode_from);
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

// ---- the OpenAI-compatible service
// --------------------------------------------------------------------------------------------

struct kvlens_service {
    std::unique_ptr<kvlens::Api> api;
};
struct kvlens_chat_request {
    kvlens::ChatRequest r;
};
struct kvlens_admission {
    std::shared_ptr<void> held;
};

namespace {

// As the HTTP server sends JSON: invalid UTF-8 in an answer replaced, not thrown.
std::string dump(const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Runs a request step with what it throws as OpenAI reports it: an ApiError as itself (400 or 503), a
// kvlens::Error as a failed request (500), anything else as a bug (500, the message as thrown).
template <typename F>
kvlens_status request(kvlens_request_error* err, F f) noexcept {
    kvlens_request_error e;
    kvlens_status st = KVLENS_ERR_INTERNAL;
    try {
        f();
        g_last_error.clear();
        return KVLENS_OK;
    } catch (const Failure& x) {
        e = {400, x.message, "invalid_request_error", "", ""};
        st = x.status;
    } catch (const kvlens::ApiError& x) {
        e = {x.status, x.what(), x.type, x.param, x.code};
        st = x.status == 503   ? KVLENS_ERR_BUSY
             : x.status >= 500 ? KVLENS_ERR_RUNTIME
                               : KVLENS_ERR_INVALID_ARGUMENT;
    } catch (const kvlens::Error& x) {
        e = {500, x.what(), "server_error", "", ""};
        st = KVLENS_ERR_RUNTIME;
    } catch (const std::bad_alloc&) {
        e = {500, "out of memory", "server_error", "", ""};
    } catch (const std::exception& x) {
        e = {500, x.what(), "server_error", "", ""};
    } catch (...) {
        e = {500, "unknown error", "server_error", "", ""};
    }
    try {
        g_last_error = e.message;
        if (err) *err = std::move(e);
    } catch (...) {
    }
    return st;
}

// A request body as JSON; a 400 naming the body when it is not JSON.
nlohmann::json parse_body(const std::string& body) {
    try {
        return nlohmann::json::parse(body);
    } catch (const nlohmann::json::exception& e) {  // parse_error; out_of_range (406) for 1E750053830
        throw kvlens::ApiError(400, "body", std::string("request body: invalid JSON (") + e.what() + ")");
    }
}

}  // namespace

kvlens_service_params kvlens_service_default_params() {
    const kvlens::ApiParams a;
    kvlens_service_params p;
    p.session = kvlens_session_default_params();
    p.session.n_ctx = 0;
    p.parallel = a.parallel;
    p.default_max_tokens = a.default_max_tokens;
    p.max_n = a.max_n;
    p.max_messages = a.max_messages;
    p.max_stop_bytes = (int)a.max_stop_bytes;
    p.queue = a.queue;
    p.timeout_s = a.timeout_s;
    return p;
}

kvlens_status kvlens_service_open(const kvlens_model* model, const kvlens_service_params& params,
                                  kvlens_service** out) {
    return guarded(KVLENS_ERR_FILE, [&] {
        need(model != nullptr, "model: null");
        need(out != nullptr, "out: null");
        need(params.max_stop_bytes >= 1, "max_stop_bytes: must be >= 1");
        // The chat template is the Api's to check: its message names the template as `kvlens serve` did.
        kvlens_session_params checked = params.session;
        checked.chat_template = "auto";
        const SessionConfig cfg = session_config(checked, /*min_ctx=*/0);
        need_batch_invariant_model(*model, params.session);
        kvlens::ApiParams a;
        a.model_id = params.model_id;
        a.session = cfg.sp;
        a.session.n_seq_max = 1;
        a.token_coe = cfg.coe;
        a.chat_template = params.session.chat_template;
        a.router_path = params.session.router_path;
        a.calibration_path = params.session.calibration_path;
        a.parallel = params.parallel;
        a.default_max_tokens = params.default_max_tokens;
        a.max_n = params.max_n;
        a.max_messages = params.max_messages;
        a.max_stop_bytes = (size_t)params.max_stop_bytes;
        a.queue = params.queue;
        a.timeout_s = params.timeout_s;
        auto s = std::make_unique<kvlens_service>();
        s->api = std::make_unique<kvlens::Api>(model->m, a);
        *out = s.release();
    });
}

void kvlens_service_free(kvlens_service* service) {
    delete service;
}

const char* kvlens_service_model_id(const kvlens_service* service) {
    return service ? service->api->model_id().c_str() : "";
}

kvlens_status kvlens_service_models(const kvlens_service* service, std::string* out_json) {
    return guarded(KVLENS_ERR_INTERNAL, [&] {
        need(service != nullptr, "service: null");
        need(out_json != nullptr, "out_json: null");
        *out_json = dump(service->api->models());
    });
}

kvlens_status kvlens_service_parse_chat(const kvlens_service* service, const std::string& body,
                                        kvlens_chat_request** out, kvlens_request_error* err) {
    return request(err, [&] {
        need(service != nullptr, "service: null");
        need(out != nullptr, "out: null");
        auto r = std::make_unique<kvlens_chat_request>();
        r->r = service->api->parse_chat(parse_body(body));
        *out = r.release();
    });
}

bool kvlens_chat_request_stream(const kvlens_chat_request* request) {
    return request && request->r.stream;
}

void kvlens_chat_request_free(kvlens_chat_request* request) {
    delete request;
}

kvlens_status kvlens_service_chat(const kvlens_service* service, const kvlens_chat_request* req,
                                  const kvlens_chunk_callback& on_chunk, std::string* out,
                                  kvlens_request_error* err) {
    return request(err, [&] {
        need(service != nullptr, "service: null");
        need(req != nullptr, "request: null");
        need(out != nullptr, "out: null");
        std::function<bool(const nlohmann::json&)> send;
        if (on_chunk) send = [&on_chunk](const nlohmann::json& j) { return on_chunk(dump(j)); };
        const nlohmann::json r = service->api->chat(req->r, send);
        *out = r.is_null() ? std::string() : dump(r);
    });
}

kvlens_status kvlens_service_embeddings(const kvlens_service* service, const std::string& body,
                                        std::string* out, kvlens_request_error* err) {
    return request(err, [&] {
        need(service != nullptr, "service: null");
        need(out != nullptr, "out: null");
        *out = dump(service->api->embeddings(parse_body(body)));
    });
}

kvlens_status kvlens_service_admit(const kvlens_service* service, kvlens_admission** out,
                                   kvlens_request_error* err) {
    return request(err, [&] {
        need(service != nullptr, "service: null");
        need(out != nullptr, "out: null");
        auto a = std::make_unique<kvlens_admission>();
        a->held = service->api->admit();
        *out = a.release();
    });
}

void kvlens_admission_free(kvlens_admission* admission) {
    delete admission;
}

int kvlens_service_max_admitted(const kvlens_service* service) {
    return service ? service->api->max_admitted() : 0;
}

void kvlens_service_shutdown(const kvlens_service* service, double grace_s) noexcept {
    if (service) service->api->shutdown(grace_s);
}

// ---- evaluations
// -------------------------------------------------------------------------------------------------

std::string kvlens_data_dir() {
    try {
        return kvlens::find_data_dir();
    } catch (...) {
        return "";
    }
}

kvlens_eval_coe_params kvlens_eval_coe_default_params() {
    const kvlens::CoeEvalParams d;
    kvlens_eval_coe_params p;
    p.data_dir = kvlens_data_dir();
    p.limit = d.limit;
    p.max_tokens = d.max_tokens;
    p.parallel = d.parallel;
    p.n_ctx = d.n_ctx;
    p.n_threads = d.n_threads;
    p.kv_source = d.kv_source;
    p.batch_invariant = d.batch_invariant;
    p.chat_template = d.chat_template;
    p.think = d.think;
    p.coe_layers = d.token_coe.layers;
    p.coe_kv_part = kvlens::to_string(d.token_coe.kv_part);
    p.coe_positions = kvlens::to_string(d.token_coe.positions);
    p.coe_head_agg = kvlens::to_string(d.token_coe.head_agg);
    p.bootstrap = d.bootstrap;
    p.seed = d.seed;
    p.dev_fraction = d.dev_fraction;
    p.command_line = "kvlens eval coe";
    p.rescore = d.rescore;
    p.recompute_scores = d.recompute_scores;
    return p;
}

namespace {

kvlens::TokenCoeSpec token_coe(const std::string& layers, const std::string& kv_part,
                               const std::string& positions, const std::string& head_agg) {
    kvlens::TokenCoeSpec c;
    param("coe_layers", [&] { return kvlens::parse_layers(layers); });  // syntax now, range on the model
    c.layers = layers;
    c.kv_part = param("coe_kv_part", [&] { return kvlens::parse_kv_part(kv_part); });
    c.positions = param("coe_positions", [&] { return kvlens::parse_coe_positions(positions); });
    c.head_agg = param("coe_head_agg", [&] { return kvlens::parse_head_agg(head_agg); });
    return c;
}

}  // namespace

kvlens_status kvlens_eval_coe(const kvlens_eval_coe_params& params) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        kvlens::CoeEvalParams p;
        p.token_coe =
            token_coe(params.coe_layers, params.coe_kv_part, params.coe_positions, params.coe_head_agg);
        p.model_path = params.model_path;
        p.dataset = params.dataset;
        p.data_dir = params.data_dir;
        p.out_dir = params.out_dir;
        p.limit = params.limit;
        p.shard = params.shard;
        p.max_tokens = params.max_tokens;
        p.parallel = params.parallel;
        p.n_ctx = params.n_ctx;
        p.n_threads = params.n_threads;
        p.kv_source = params.kv_source;
        p.batch_invariant = params.batch_invariant;
        p.chat_template = params.chat_template;
        p.think = params.think;
        p.bootstrap = params.bootstrap;
        p.seed = params.seed;
        p.dev_fraction = params.dev_fraction;
        p.command_line = params.command_line;
        p.rescore = params.rescore;
        p.recompute_scores = params.recompute_scores;
        kvlens::run_coe_eval(p);
    });
}

kvlens_eval_sample_params kvlens_eval_sample_default_params() {
    const kvlens::SampleEvalParams d;
    kvlens_eval_sample_params p;
    p.data_dir = kvlens_data_dir();
    p.limit = d.limit;
    p.part = d.part;
    p.dev_fraction = d.dev_fraction;
    p.max_tokens = d.max_tokens;
    p.ns = d.ns;
    p.temperature = d.temperature;
    p.top_k = d.top_k;
    p.top_p = d.top_p;
    p.seed = d.seed;
    p.scores = d.scores;
    p.calibration = d.calibration;
    p.n_ctx = d.n_ctx;
    p.n_threads = d.n_threads;
    p.kv_source = d.kv_source;
    p.chat_template = d.chat_template;
    p.think = d.think;
    p.coe_layers = d.token_coe.layers;
    p.coe_kv_part = kvlens::to_string(d.token_coe.kv_part);
    p.coe_positions = kvlens::to_string(d.token_coe.positions);
    p.coe_head_agg = kvlens::to_string(d.token_coe.head_agg);
    p.command_line = "kvlens eval sample";
    p.rescore = d.rescore;
    return p;
}

kvlens_status kvlens_eval_sample(const kvlens_eval_sample_params& params) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        if (params.part != "all" && params.part != "dev" && params.part != "test")
            fail(KVLENS_ERR_INVALID_ARGUMENT, "part '" + params.part + "': expected all, dev or test");
        kvlens::SampleEvalParams p;
        p.token_coe =
            token_coe(params.coe_layers, params.coe_kv_part, params.coe_positions, params.coe_head_agg);
        p.model_path = params.model_path;
        p.dataset = params.dataset;
        p.data_dir = params.data_dir;
        p.out_dir = params.out_dir;
        p.limit = params.limit;
        p.shard = params.shard;
        p.part = params.part;
        p.dev_fraction = params.dev_fraction;
        p.max_tokens = params.max_tokens;
        p.ns = params.ns;
        p.temperature = params.temperature;
        p.top_k = params.top_k;
        p.top_p = params.top_p;
        p.seed = params.seed;
        p.scores = params.scores;
        p.calibration = params.calibration;
        p.n_ctx = params.n_ctx;
        p.n_threads = params.n_threads;
        p.kv_source = params.kv_source;
        p.chat_template = params.chat_template;
        p.think = params.think;
        p.rescore = params.rescore;
        p.command_line = params.command_line;
        kvlens::run_sample_eval(p);
    });
}

kvlens_status kvlens_eval_merge(const std::vector<std::string>& dirs, const std::string& out_dir,
                                const std::string& command_line) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        kvlens::MergeParams p;
        p.dirs = dirs;
        p.out_dir = out_dir;
        p.command_line = command_line;
        kvlens::run_eval_merge(p);
    });
}

kvlens_eval_embed_params kvlens_eval_embed_default_params() {
    const kvlens::EmbedEvalParams d;
    kvlens_eval_embed_params p;
    p.texts_only = d.texts_only;
    p.hidden = d.hidden;
    p.random = d.random;
    p.batch_seqs = d.batch_seqs;
    p.n_ctx = d.n_ctx;
    p.n_threads = d.n_threads;
    p.kv_source = d.kv_source;
    p.timing_texts = d.timing_texts;
    p.probe_c = d.probe.C;
    p.probe_standardize = d.probe.standardize;
    p.probe_max_iter = d.probe.max_iter;
    p.command_line = "kvlens eval embed";
    return p;
}

kvlens_status kvlens_eval_embed(const kvlens_eval_embed_params& params) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        kvlens::EmbedEvalParams p;
        p.model_path = params.model_path;
        p.tasks = params.tasks;
        p.out_dir = params.out_dir;
        p.extras = params.extras;
        p.texts_only = params.texts_only;
        p.hidden = params.hidden;
        p.random = params.random;
        p.batch_seqs = params.batch_seqs;
        p.n_ctx = params.n_ctx;
        p.n_threads = params.n_threads;
        p.kv_source = params.kv_source;
        p.timing_texts = params.timing_texts;
        p.probe.C = params.probe_c;
        p.probe.standardize = params.probe_standardize;
        p.probe.max_iter = params.probe_max_iter;
        p.shard = params.shard;
        p.command_line = params.command_line;
        kvlens::run_embed_eval(p);
    });
}

kvlens_router_label_params kvlens_router_label_default_params() {
    const kvlens::RouterLabelParams d;
    kvlens_router_label_params p;
    p.data_dir = kvlens_data_dir();
    p.chat_template = d.chat_template;
    p.preset = d.preset;
    p.limit = d.limit;
    p.part = d.part;
    p.dev_fraction = d.dev_fraction;
    p.max_tokens = d.max_tokens;
    p.long_tokens = d.long_tokens;
    p.windows = d.windows;
    p.cut_max_tokens = d.cut_max_tokens;
    p.n_ctx = d.n_ctx;
    p.n_threads = d.n_threads;
    p.kv_source = d.kv_source;
    p.command_line = "kvlens router label";
    return p;
}

kvlens_status kvlens_router_label(const kvlens_router_label_params& params) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        kvlens::RouterLabelParams p;
        p.model_path = params.model_path;
        p.dataset = params.dataset;
        p.data_dir = params.data_dir;
        p.out_dir = params.out_dir;
        p.chat_template = params.chat_template;
        p.preset = params.preset;
        p.limit = params.limit;
        p.shard = params.shard;
        p.part = params.part;
        p.dev_fraction = params.dev_fraction;
        p.max_tokens = params.max_tokens;
        p.long_tokens = params.long_tokens;
        p.windows = params.windows;
        p.cut_max_tokens = params.cut_max_tokens;
        p.n_ctx = params.n_ctx;
        p.n_threads = params.n_threads;
        p.kv_source = params.kv_source;
        p.command_line = params.command_line;
        kvlens::run_router_label(p);
    });
}

kvlens_router_train_params kvlens_router_train_default_params() {
    const kvlens::RouterTrainCliParams d;
    kvlens_router_train_params p;
    p.preset = d.preset;
    p.windows = d.windows;
    p.epochs = 0;
    p.lr = 0;
    p.seed = -1;
    p.command_line = "kvlens router train";
    return p;
}

kvlens_status kvlens_router_train(const kvlens_router_train_params& params) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        kvlens::RouterTrainCliParams p;
        p.label_dirs = params.label_dirs;
        p.out_path = params.out_path;
        p.preset = params.preset;
        p.windows = params.windows;
        p.command_line = params.command_line;
        p.train = param("preset", [&] { return kvlens::router_train_preset(p.preset); });
        if (params.epochs > 0) p.train.epochs = params.epochs;
        if (params.lr > 0) p.train.lr = params.lr;
        if (params.seed >= 0) p.train.seed = (uint64_t)params.seed;
        kvlens::run_router_train(p);
    });
}

kvlens_router_eval_params kvlens_router_eval_default_params() {
    const kvlens::RouterEvalParams d;
    kvlens_router_eval_params p;
    p.data_dir = kvlens_data_dir();
    p.chat_template = d.chat_template;
    p.check_every = d.policy.check_every;
    p.route_threshold = d.policy.route_threshold;
    p.switch_delta = d.policy.delta;
    p.limit = d.limit;
    p.part = d.part;
    p.dev_fraction = d.dev_fraction;
    p.max_tokens = d.max_tokens;
    p.n_ctx = d.n_ctx;
    p.n_threads = d.n_threads;
    p.kv_source = d.kv_source;
    p.long_tokens = d.long_tokens;
    p.deer_trial_tokens = d.deer_trial_tokens;
    p.command_line = "kvlens router eval";
    return p;
}

kvlens_status kvlens_router_eval(const kvlens_router_eval_params& params) {
    return guarded(KVLENS_ERR_RUNTIME, [&] {
        kvlens::RouterEvalParams p;
        p.model_path = params.model_path;
        p.router_path = params.router_path;
        p.dataset = params.dataset;
        p.data_dir = params.data_dir;
        p.out_dir = params.out_dir;
        p.chat_template = params.chat_template;
        p.policy.check_every = params.check_every;
        p.policy.route_threshold = params.route_threshold;
        p.policy.delta = params.switch_delta;
        p.limit = params.limit;
        p.shard = params.shard;
        p.part = params.part;
        p.dev_fraction = params.dev_fraction;
        p.max_tokens = params.max_tokens;
        p.n_ctx = params.n_ctx;
        p.n_threads = params.n_threads;
        p.kv_source = params.kv_source;
        p.long_tokens = params.long_tokens;
        for (int b : params.budgets) need(b >= 1, "budgets: each must be >= 1");
        for (float t : params.deer_thresholds)
            need(std::isfinite(t) && t >= 0, "deer_thresholds: each must be >= 0");
        need(params.deer_trial_tokens >= 1, "deer_trial_tokens: must be >= 1");
        p.budgets = params.budgets;
        p.deer_thresholds = params.deer_thresholds;
        p.deer_trial_tokens = params.deer_trial_tokens;
        p.command_line = params.command_line;
        kvlens::run_router_eval(p);
    });
}
