// kvlens generate: answer a prompt, optionally writing pooled per-layer KV features as JSONL.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "capture/observers.h"
#include "cli/common.h"
#include "engine/chat_template.h"
#include "engine/generate.h"
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

void run_generate(const GenerateOptions& o) {
    if (o.prompt.empty()) throw Error("--prompt: empty");
    const ChatTemplate tmpl_flag =
        with_flag("--template", [&] { return parse_chat_template(o.chat_template); });
    const ThinkMode think = with_flag("--think", [&] { return parse_think_mode(o.think); });
    const PoolSpec spec = pool_spec(o.pool);

    std::unique_ptr<Model> model = load_model(o.model);
    const ModelInfo& mi = model->info();

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

    GenerateParams gp;
    gp.max_tokens = o.max_tokens;
    gp.sampling = o.sampling;
    const Generation g = generate(session, {prompt}, gp).at(0);
    printf("%s\n", g.text.c_str());
    fflush(stdout);

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
    sub->add_option("--think", o->think, "thinking mode for hybrid reasoning models: on, off, default")
        ->capture_default_str();
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
