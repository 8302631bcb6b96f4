// kvlens generate: answer a prompt, optionally writing pooled per-layer KV features as JSONL.
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "capture/observers.h"
#include "cli/common.h"
#include "engine/chat_template.h"
#include "engine/generate.h"
#include "kvlens/kvlens.h"
#include "methods/calibration.h"
#include "methods/coe.h"
#include "methods/fast_slow.h"
#include "util/error.h"

namespace kvlens::cli {

namespace {

struct GenerateOptions {
    ModelOptions model;
    PoolOptions pool;
    std::string prompt, system, think = "default", chat_template = "auto", features, positions = "generated";
    bool raw = false;
    int max_tokens = 256;
    SamplingParams sampling;
    std::string router, route_log;  // --think auto
    RoutePolicy policy;
    bool no_switch = false;
    std::string calibration, score = "hs_coe_c";  // P(correct) of the answer
    std::string scores_out;                       // --scores FILE
    TokenCoeOptions coe;
};

// Which positions the features pool: all of them, the prompt, the generated tokens that were fed back, or
// the producer positions (last prompt token + fed-back generated tokens: the forward passes that produced
// an output token, as KV-CoE uses).
std::pair<llama_pos, llama_pos> position_range(const std::string& which, llama_pos n_prompt) {
    if (which == "all") return {0, INT32_MAX};
    if (which == "prompt") return {0, n_prompt};
    if (which == "producer") return {n_prompt - 1, INT32_MAX};
    return {n_prompt, INT32_MAX};  // generated
}

// A failed public API call as the CLI reports errors.
void check(kvlens_status s) {
    if (s != KVLENS_OK) throw Error(kvlens_last_error());
}

// --think auto: the router picks the mode on the prompt and may switch once while decoding. Through the
// public API (include/kvlens/kvlens.h), which runs the same internal calls.
void run_generate_routed(const GenerateOptions& o) {
    if (o.router.empty()) throw Error("--think auto: needs --router FILE (from kvlens router train)");
    if (o.raw) throw Error("--think auto: needs the chat template (not --raw)");
    if (!o.features.empty()) throw Error("--features: not available with --think auto");
    if (!o.calibration.empty()) throw Error("--calibration: not available with --think auto");
    if (!o.scores_out.empty()) throw Error("--scores: not available with --think auto");
    with_flag("--template", [&] { return parse_chat_template(o.chat_template); });
    const CaptureSource source =
        with_flag("--kv-source", [&] { return parse_capture_source(o.model.kv_source); });

    kvlens_model_params mp = kvlens_model_default_params();
    mp.n_gpu_layers = o.model.gpu_layers;
    mp.verbose = o.model.verbose;
    kvlens_model* m = nullptr;
    check(kvlens_model_load(o.model.model, mp, &m));
    const kvlens_model_ptr model(m);
    kvlens_session_params sp = kvlens_session_default_params();
    sp.n_ctx = o.model.ctx;
    sp.n_batch = o.model.batch;
    sp.n_threads = o.model.threads;
    sp.flash_attn = o.model.flash_attn == "on"    ? KVLENS_FLASH_ATTN_ON
                    : o.model.flash_attn == "off" ? KVLENS_FLASH_ATTN_OFF
                                                  : KVLENS_FLASH_ATTN_AUTO;
    sp.kv_source = source == CaptureSource::Cache ? KVLENS_KV_SOURCE_CACHE : KVLENS_KV_SOURCE_GRAPH;
    sp.chat_template = o.chat_template;
    sp.router_path = o.router;
    kvlens_session* s = nullptr;
    check(kvlens_session_open(model.get(), sp, &s));
    const kvlens_session_ptr session(s);

    kvlens_generate_params gp = kvlens_generate_default_params();
    gp.system = o.system;
    gp.think = KVLENS_THINK_AUTO;
    gp.scores = false;
    gp.max_tokens = o.max_tokens;
    gp.temperature = o.sampling.temperature;
    gp.top_k = o.sampling.top_k;
    gp.top_p = o.sampling.top_p;
    gp.seed = o.sampling.seed;
    gp.check_every = o.policy.check_every;
    gp.route_threshold = o.policy.route_threshold;
    gp.switch_delta = o.policy.delta;
    gp.allow_switch = !o.no_switch;
    kvlens_generation r;
    check(kvlens_generate(session.get(), o.prompt, gp, &r));
    printf("%s\n", r.text.c_str());
    fflush(stdout);
    const int n_generated = r.n_sampled + r.n_switch_tokens;
    std::string sw = "no switch";
    if (r.switch_at >= 0)
        sw = "switched to " + r.think_final + " after " + std::to_string(r.switch_at) + " tokens";
    fprintf(stderr, "kvlens: router d=%.1f -> %s; %s; %d tokens generated (%d sampled%s, %d switch)\n",
            r.route_score, r.think_initial.c_str(), sw.c_str(), n_generated, r.n_sampled,
            r.n_dropped ? (", " + std::to_string(r.n_dropped) + " of them dropped").c_str() : "",
            r.n_switch_tokens);
    if (!o.route_log.empty()) {
        nlohmann::json j = {{"prompt", o.prompt},
                            {"prompt_score", (float)r.route_score},
                            {"initial", r.think_initial},
                            {"final", r.think_final},
                            {"switch_at", r.switch_at},
                            {"n_generated", n_generated},
                            {"n_sampled", r.n_sampled},
                            {"n_switch_tokens", r.n_switch_tokens},
                            {"n_dropped", r.n_dropped},
                            {"stop", r.stop},
                            {"text", r.text},
                            {"answer", r.answer}};
        nlohmann::json checks = nlohmann::json::array();
        for (const auto& [n, d] : r.checks) checks.push_back({n, d});
        j["checks"] = checks;
        std::ofstream f(o.route_log, std::ios::app);
        if (!f) throw Error("--route-log '" + o.route_log + "': cannot open for writing");
        f << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    }
}

void run_generate(const GenerateOptions& o) {
    if (o.prompt.empty()) throw Error("--prompt: empty");
    if (o.think == "auto") return run_generate_routed(o);
    if (!o.router.empty()) throw Error("--router: only with --think auto");
    const ChatTemplate tmpl_flag =
        with_flag("--template", [&] { return parse_chat_template(o.chat_template); });
    const ThinkMode think = with_flag("--think", [&] { return parse_think_mode(o.think); });
    const PoolSpec spec = pool_spec(o.pool);
    const TokenCoeSpec coe_spec = token_coe_spec(o.coe);
    // Before any work: a file that cannot be written would lose the generation's scores.
    if (!o.scores_out.empty() && !std::ofstream(o.scores_out, std::ios::app))
        throw Error("--scores '" + o.scores_out + "': cannot open for writing");
    // A calibration names its score; "auto" looks next to the model for --score's.
    std::vector<Calibration> cals;
    if (!o.calibration.empty()) {
        const std::string path =
            o.calibration == "auto" ? default_calibration_path(o.model.model, o.score) : o.calibration;
        cals.push_back(with_flag("--calibration", [&] { return load_calibration(path); }));
    }

    std::unique_ptr<Model> model = load_model(o.model);
    const ModelInfo& mi = model->info();
    for (const Calibration& c : cals)
        check_calibration_model(c, calibration_model_of(model->path(), mi.name, mi.arch, mi.n_layer));

    std::string text = o.prompt;
    ChatTemplate tmpl = tmpl_flag;
    if (!o.raw) {
        if (tmpl == ChatTemplate::Auto) tmpl = detect_chat_template(mi.chat_template, mi.arch);
        std::vector<ChatMessage> msgs;
        if (!o.system.empty()) msgs.push_back({"system", o.system});
        msgs.push_back({"user", o.prompt});
        text = render_chat(tmpl, msgs, /*add_assistant_prefix=*/true, think);
    }
    const std::vector<llama_token> prompt =
        model->tokenize(text, /*add_special=*/true, /*parse_special=*/!o.raw);

    Session session(*model, session_params(o.model));
    std::unique_ptr<KvPool> pool;
    std::unique_ptr<PoolObserver> obs;
    if (!o.features.empty()) {
        pool = with_flag("--layers", [&] {
            return std::make_unique<KvPool>(spec, mi.n_layer, mi.n_head_kv, mi.head_dim);
        });
        const auto [p0, p1] = position_range(o.positions, (llama_pos)prompt.size());
        obs = std::make_unique<PoolObserver>(*pool, 0, p0, p1);
        session.capture().subscribe(obs.get());
    }

    std::unique_ptr<CoeScorer> scorer;
    if (!cals.empty() || !o.scores_out.empty())
        scorer = with_flag("--coe-layers", [&] {
            return std::make_unique<CoeScorer>(session, 0, (int)prompt.size(), coe_spec);
        });

    GenerateParams gp;
    gp.max_tokens = o.max_tokens;
    gp.sampling = o.sampling;
    const Generation g = generate(session, {prompt}, gp).at(0);
    printf("%s\n", g.text.c_str());
    fflush(stdout);
    std::map<std::string, double> scores;
    if (scorer) {
        const CoeResult r = scorer->result(g.steps);
        scores = r.named();
        for (const auto& [k, v] : calibrated_scores(scores, cals)) {
            scores[k] = v;
            if (cals[0].method == CalibrationMethod::Logistic)
                fprintf(stderr, "kvlens: %s = %.3f (from %zu scores)\n", k.c_str(), v,
                        cals[0].features.size());
            else
                fprintf(stderr, "kvlens: %s = %.3f (raw %s = %.6g)\n", k.c_str(), v, cals[0].score.c_str(),
                        scores.at(cals[0].score));
        }
        if (!o.scores_out.empty()) {
            nlohmann::json j = {{"model", model->path()},
                                {"token_coe",
                                 {{"layers", scorer->token().layers()},
                                  {"kv_part", to_string(coe_spec.kv_part)},
                                  {"positions", to_string(coe_spec.positions)},
                                  {"head_agg", to_string(coe_spec.head_agg)},
                                  {"n_states", scorer->token().count()},
                                  {"m", r.kv.m},
                                  {"a", r.kv.a},
                                  {"status", coe_status_string(r.kv.status)}}},
                                {"prompt_tokens", g.prompt},
                                {"output_tokens", g.output},
                                {"stop", to_string(g.stop)},
                                {"text", g.text},
                                {"scores", scores}};
            std::ofstream f(o.scores_out, std::ios::app);
            if (!f) throw Error("--scores '" + o.scores_out + "': cannot open for writing");
            f << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            if (!f) throw Error("--scores '" + o.scores_out + "': write failed");
        }
    }

    if (!o.features.empty()) {
        session.capture().unsubscribe(obs.get());
        const Pooled r = pool->result();
        nlohmann::json j;
        j["model"] = model->path();
        j["arch"] = mi.arch;
        j["template"] = o.raw ? "raw" : to_string(tmpl);
        j["think"] = to_string(think);
        j["n_layer"] = mi.n_layer;
        j["kv_width"] = mi.kv_width();
        j["width"] = r.width;
        j["n_vectors"] = r.n_vectors;
        j["pooling"] = {{"kv_part", to_string(spec.kv_part)},
                        {"pos_agg", to_string(spec.pos_agg)},
                        {"head_agg", to_string(spec.head_agg)},
                        {"layer_agg", to_string(spec.layer_agg)},
                        {"layers", pool->layers()},
                        {"normalize", spec.normalize},
                        {"window", spec.window},
                        {"positions", o.positions},
                        {"n_positions", pool->count()}};
        j["prompt_tokens"] = g.prompt;
        j["output_tokens"] = g.output;
        j["stop"] = to_string(g.stop);
        j["text"] = g.text;
        if (!scores.empty()) j["scores"] = scores;
        std::vector<std::vector<float>> vecs;
        for (int i = 0; i < r.n_vectors; ++i) vecs.emplace_back(r.row(i), r.row(i) + r.width);
        j["vectors"] = vecs;
        std::ofstream f(o.features, std::ios::app);
        if (!f) throw Error("--features '" + o.features + "': cannot open for writing");
        f << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
          << "\n";  // outputs may hold invalid UTF-8
        if (!f) throw Error("--features '" + o.features + "': write failed");
        fprintf(stderr, "kvlens: features: %d vector(s) x %d floats (%s, %s over %lld %s positions) -> %s\n",
                r.n_vectors, r.width, to_string(spec.kv_part), to_string(spec.pos_agg),
                (long long)pool->count(), o.positions.c_str(), o.features.c_str());
    }
}

}  // namespace

CLI::App* add_generate_command(CLI::App& app) {
    auto o = std::make_shared<GenerateOptions>();
    CLI::App* sub = app.add_subcommand("generate", "answer a prompt; optionally write pooled KV features");
    add_model_options(sub, o->model);
    sub->add_option("-p,--prompt", o->prompt, "the user message (or the raw text with --raw)")->required();
    sub->add_option("-s,--system", o->system, "a system message");
    sub->add_option("--think", o->think,
                    "thinking mode for hybrid reasoning models: on, off, default, auto (a router decides)")
        ->capture_default_str();
    sub->add_option("--calibration", o->calibration,
                    "calibration file (kvlens calibrate) or 'auto' (<model>.calibration.<score>.json): print "
                    "P(correct) of the answer; --features lines also get the scores");
    sub->add_option("--score", o->score, "the score --calibration auto looks for")->capture_default_str();
    sub->add_option("--scores", o->scores_out,
                    "append one JSON line with every score of the answer (KV-CoE on both axes, hidden-state "
                    "CoE, output baselines), the token-axis chain's steps and the tokens");
    add_token_coe_options(sub, o->coe);
    sub->add_option("--router", o->router, "router file for --think auto (kvlens router train)");
    sub->add_option("--check-every", o->policy.check_every,
                    "--think auto: tokens between two windowed predictions while decoding")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    sub->add_option("--route-threshold", o->policy.route_threshold,
                    "--think auto: predicted difficulty below which the answer is fast")
        ->check(CLI::Range(0.0, 100.0))
        ->capture_default_str();
    sub->add_option(
           "--switch-delta", o->policy.delta,
           "--think auto: switch slow -> fast below threshold - delta, fast -> slow above threshold + delta")
        ->check(CLI::Range(0.0, 100.0))
        ->capture_default_str();
    sub->add_flag("--no-switch", o->no_switch, "--think auto: route on the prompt only, never switch");
    sub->add_option("--route-log", o->route_log,
                    "--think auto: append one JSON line with the route, the switch and the token counts");
    sub->add_option("--template", o->chat_template,
                    "chat template: auto (from the GGUF), chatml, qwen2, qwen3, deepseek-r1, llama3")
        ->capture_default_str();
    sub->add_flag("--raw", o->raw, "no chat template: the prompt is the model's input text");
    sub->add_option("-n,--max-tokens", o->max_tokens, "tokens to generate at most")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    sub->add_option("--temp", o->sampling.temperature, "sampling temperature (0: greedy)")
        ->check(CLI::Range(0.0, 100.0))
        ->capture_default_str();
    sub->add_option("--top-k", o->sampling.top_k, "top-k filter (0: off)")
        ->check(CLI::Range(0, 1 << 24))
        ->capture_default_str();
    sub->add_option("--top-p", o->sampling.top_p, "top-p filter (1: off)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    sub->add_option("--seed", o->sampling.seed, "sampling seed")->capture_default_str();
    sub->add_option("--features", o->features,
                    "append one JSON line with the pooled per-layer KV vectors, token ids and pooling");
    sub->add_option(
           "--positions", o->positions,
           "positions the features pool: generated, producer (last prompt token + generated), prompt, all")
        ->check(CLI::IsMember({"generated", "producer", "prompt", "all"}))
        ->capture_default_str();
    add_pool_options(sub, o->pool);
    sub->callback([o] { run_generate(*o); });
    return sub;
}

}  // namespace kvlens::cli
