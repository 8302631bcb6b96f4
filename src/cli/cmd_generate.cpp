// kvlens generate: answer a prompt, optionally writing pooled per-layer KV features as JSONL.
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "util/error.h"

namespace kvlens::cli {

namespace {

struct GenerateOptions {
    ModelOptions model;
    PoolOptions pool;
    std::string prompt, system, think = "default", chat_template = "auto", features, positions = "generated";
    bool raw = false;
    int max_tokens = 256;
    kvlens_generate_params gen = kvlens_generate_default_params();  // sampling and --think auto's policy
    std::string router, route_log;                                  // --think auto
    bool no_switch = false;
    std::string calibration, score = "hs_coe_c";  // P(correct) of the answer
    std::string scores_out;                       // --scores FILE
    TokenCoeOptions coe;
};

// The honest cost of a generation: every token it decoded, by kind, the decode calls and the wall-clock.
nlohmann::json cost_json(const kvlens_generation& g) {
    return {{"think", g.think_policy},
            {"think_exit", g.think_exit},
            {"n_think_tokens", g.n_think_tokens},
            {"n_answer_tokens", g.n_answer_tokens},
            {"n_trial_tokens", g.n_trial_tokens},
            {"n_trials", g.n_trials},
            {"n_decode_calls", g.n_decode_calls},
            {"wall_ms", g.wall_ms}};
}

// --think auto: the router picks the mode on the prompt and may switch once while decoding; budget:N and
// deer[:T] leave the think block without one. Through the public API (include/kvlens/kvlens.h), which runs
// the same internal calls.
void run_generate_routed(const GenerateOptions& o, const kvlens_generate_params& parsed) {
    const bool routed = parsed.think == KVLENS_THINK_AUTO;
    const std::string flag = "--think " + o.think;
    if (routed && o.router.empty())
        throw Error("--think auto: needs --router FILE (from kvlens router train)");
    if (!routed && !o.router.empty()) throw Error("--router: only with --think auto");
    if (o.raw) throw Error(flag + ": needs the chat template (not --raw)");
    if (!o.features.empty()) throw Error("--features: not available with " + flag);
    if (!o.calibration.empty()) throw Error("--calibration: not available with " + flag);
    if (!o.scores_out.empty()) throw Error("--scores: not available with " + flag);
    kvlens_session_params sp = api_session_params(o.model);
    sp.chat_template = o.chat_template;
    if (parsed.think == KVLENS_THINK_DEER) sp.n_seq_max = 2;  // the trials' copy of the sequence
    check(kvlens_session_params_check(sp), {{"chat_template", "--template"}});
    const kvlens_model_ptr model = open_model(o.model);
    sp.router_path = o.router;
    kvlens_session* s = nullptr;
    check(kvlens_session_open(model.get(), sp, &s));
    const kvlens_session_ptr session(s);

    kvlens_generate_params gp = parsed;
    gp.system = o.system;
    gp.scores = false;
    gp.max_tokens = o.max_tokens;
    gp.allow_switch = !o.no_switch;
    kvlens_generation r;
    check(kvlens_generate(session.get(), o.prompt, gp, &r), {{"think", "--think"}});
    printf("%s\n", r.text.c_str());
    fflush(stdout);
    const int n_generated = r.n_sampled + r.n_switch_tokens + r.n_trial_tokens;
    if (routed) {
        std::string sw = "no switch";
        if (r.switch_at >= 0)
            sw = "switched to " + r.think_final + " after " + std::to_string(r.switch_at) + " tokens";
        fprintf(stderr, "kvlens: router d=%.1f -> %s; %s; %d tokens generated (%d sampled%s, %d switch)\n",
                r.route_score, r.think_initial.c_str(), sw.c_str(), n_generated, r.n_sampled,
                r.n_dropped ? (", " + std::to_string(r.n_dropped) + " of them dropped").c_str() : "",
                r.n_switch_tokens);
    } else {
        fprintf(stderr,
                "kvlens: %s: think block ended by %s; %d tokens generated (%d think, %d answer, %d in %d "
                "trial(s), %d appended); %lld decode calls, %.0f ms\n",
                r.think_policy.c_str(), r.think_exit.empty() ? "none" : r.think_exit.c_str(), n_generated,
                r.n_think_tokens, r.n_answer_tokens, r.n_trial_tokens, r.n_trials, r.n_switch_tokens,
                (long long)r.n_decode_calls, r.wall_ms);
    }
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
        if (!routed) j["prompt_score"] = nullptr;
        j["cost"] = cost_json(r);
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
    kvlens_generate_params parsed = o.gen;
    check(kvlens_think_parse(o.think, &parsed), {{"think", "--think"}});
    if (parsed.think >= KVLENS_THINK_AUTO) return run_generate_routed(o, parsed);
    if (!o.router.empty()) throw Error("--router: only with --think auto");
    kvlens_session_params sp = api_session_params(o.model);
    sp.chat_template = o.chat_template;
    const bool want_scores = !o.calibration.empty() || !o.scores_out.empty();
    sp.capture = want_scores || !o.features.empty();  // plain generation: no eval callback at all
    set_token_coe(sp, o.coe);
    check(kvlens_session_params_check(sp), flag_names());
    const kvlens_think think = parse_think(o.think);
    kvlens_generate_params gp = o.gen;
    gp.system = o.system;
    gp.think = think;
    gp.raw = o.raw;
    gp.max_tokens = o.max_tokens;
    gp.scores = want_scores;
    gp.features = !o.features.empty();
    gp.feature_positions = o.positions;
    set_pooling(gp, o.pool);
    gp.features = true;  // every pooling flag is checked, as before, whether or not features are written
    check(kvlens_generate_params_check(gp), flag_names());
    gp.features = !o.features.empty();
    if (!want_scores) {  // as before: the KV-CoE flags' layers are checked on the model only when scored
        const kvlens_session_params d = kvlens_session_default_params();
        sp.coe_layers = d.coe_layers;
    }
    // Before any work: a file that cannot be written would lose the generation's scores.
    if (!o.scores_out.empty() && !std::ofstream(o.scores_out, std::ios::app))
        throw Error("--scores '" + o.scores_out + "': cannot open for writing");
    // A calibration names its score; "auto" looks next to the model for --score's.
    kvlens_calibration_info cal;
    if (!o.calibration.empty()) {
        sp.calibration_path =
            o.calibration == "auto" ? kvlens_default_calibration_path(o.model.model, o.score) : o.calibration;
        check_calibration_file(kvlens_calibration_load(sp.calibration_path, &cal));
    }

    const kvlens_model_ptr model = open_model(o.model);
    kvlens_model_info mi;
    check(kvlens_model_get_info(model.get(), &mi));
    kvlens_session* s = nullptr;
    check_calibrated(kvlens_session_open(model.get(), sp, &s));
    const kvlens_session_ptr session(s);

    kvlens_generation g;
    check(kvlens_generate(session.get(), o.prompt, gp, &g), flag_names());
    printf("%s\n", g.text.c_str());
    fflush(stdout);
    const std::map<std::string, double>& scores = g.scores;
    if (want_scores) {
        for (const auto& [k, v] : scores) {
            if (k.rfind("p_correct.", 0) != 0) continue;
            if (cal.method == "logistic")
                fprintf(stderr, "kvlens: %s = %.3f (from %zu scores)\n", k.c_str(), v, cal.features.size());
            else
                fprintf(stderr, "kvlens: %s = %.3f (raw %s = %.6g)\n", k.c_str(), v, cal.score.c_str(),
                        scores.at(cal.score));
        }
        if (!o.scores_out.empty()) {
            nlohmann::json j = {{"model", mi.path},
                                {"token_coe",
                                 {{"layers", g.coe_layers},
                                  {"kv_part", o.coe.kv_part},
                                  {"positions", o.coe.positions},
                                  {"head_agg", o.coe.head_agg},
                                  {"n_states", g.coe_n_states},
                                  {"m", g.coe_m},
                                  {"a", g.coe_a},
                                  {"status", g.coe_status}}},
                                {"prompt_tokens", g.prompt_tokens},
                                {"output_tokens", g.output_tokens},
                                {"stop", g.stop},
                                {"text", g.text},
                                {"cost", cost_json(g)},
                                {"scores", scores}};
            std::ofstream f(o.scores_out, std::ios::app);
            if (!f) throw Error("--scores '" + o.scores_out + "': cannot open for writing");
            f << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            if (!f) throw Error("--scores '" + o.scores_out + "': write failed");
        }
    }

    if (!o.features.empty()) {
        nlohmann::json j;
        j["model"] = mi.path;
        j["arch"] = mi.arch;
        j["template"] = o.raw ? "raw" : o.chat_template == "auto" ? mi.chat_template : o.chat_template;
        j["think"] = o.think;
        j["n_layer"] = mi.n_layer;
        j["kv_width"] = mi.kv_width;
        j["width"] = g.feature_width;
        j["n_vectors"] = g.feature_n_vectors;
        j["pooling"] = {{"kv_part", gp.feature_kv_part},       {"pos_agg", gp.feature_pos_agg},
                        {"head_agg", gp.feature_head_agg},     {"layer_agg", gp.feature_layer_agg},
                        {"layers", g.feature_layers},          {"normalize", gp.feature_normalize},
                        {"window", gp.feature_window},         {"positions", o.positions},
                        {"n_positions", g.feature_n_positions}};
        j["prompt_tokens"] = g.prompt_tokens;
        j["output_tokens"] = g.output_tokens;
        j["stop"] = g.stop;
        j["text"] = g.text;
        j["cost"] = cost_json(g);
        if (!scores.empty()) j["scores"] = scores;
        std::vector<std::vector<float>> vecs;
        for (int i = 0; i < g.feature_n_vectors; ++i) {
            const float* row = g.feature_data.data() + (size_t)i * g.feature_width;
            vecs.emplace_back(row, row + g.feature_width);
        }
        j["vectors"] = vecs;
        std::ofstream f(o.features, std::ios::app);
        if (!f) throw Error("--features '" + o.features + "': cannot open for writing");
        f << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
          << "\n";  // outputs may hold invalid UTF-8
        if (!f) throw Error("--features '" + o.features + "': write failed");
        fprintf(stderr, "kvlens: features: %d vector(s) x %d floats (%s, %s over %lld %s positions) -> %s\n",
                g.feature_n_vectors, g.feature_width, gp.feature_kv_part.c_str(), gp.feature_pos_agg.c_str(),
                (long long)g.feature_n_positions, o.positions.c_str(), o.features.c_str());
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
                    "thinking mode for hybrid reasoning models: on, off, default, auto (a router decides), "
                    "budget:N (append the end of the think block after N think tokens), deer[:T] (at each "
                    "line break a trial answer on a copied sequence; exit when its mean token probability "
                    "> T, default 0.95)")
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
    sub->add_option("--check-every", o->gen.check_every,
                    "--think auto: tokens between two windowed predictions while decoding")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    sub->add_option("--route-threshold", o->gen.route_threshold,
                    "--think auto: predicted difficulty below which the answer is fast")
        ->check(CLI::Range(0.0, 100.0))
        ->capture_default_str();
    sub->add_option(
           "--switch-delta", o->gen.switch_delta,
           "--think auto: switch slow -> fast below threshold - delta, fast -> slow above threshold + delta")
        ->check(CLI::Range(0.0, 100.0))
        ->capture_default_str();
    sub->add_option("--deer-trial-tokens", o->gen.deer_trial_tokens,
                    "--think deer: tokens a trial answer may take at most")
        ->check(CLI::Range(1, 1 << 20))
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
    sub->add_option("--temp", o->gen.temperature, "sampling temperature (0: greedy)")
        ->check(CLI::Range(0.0, 100.0))
        ->capture_default_str();
    sub->add_option("--top-k", o->gen.top_k, "top-k filter (0: off)")
        ->check(CLI::Range(0, 1 << 24))
        ->capture_default_str();
    sub->add_option("--top-p", o->gen.top_p, "top-p filter (1: off)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    sub->add_option("--seed", o->gen.seed, "sampling seed")->capture_default_str();
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
