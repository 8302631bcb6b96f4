// Benchmark (not a test): the decode loop of `kvlens generate` (engine generate(): the sampler chain and the
// per-step softmax statistics at every token, as the CLI runs it) with scores off and with the scorer
// `kvlens generate --scores` subscribes (CoeScorer: token-axis KV-CoE, layer-axis KV chains, hidden-state
// CoE), timed inside the process so that model loading is excluded, as llama-bench excludes it. "off" opens
// its session without capture (no eval callback), as `kvlens generate` does without scores or features.
//
// Prompt: a fixed, model-independent list of token ids (ids cycling through the vocabulary's lower range,
// as bench-capture), no chat template, so that the prefill length is exact. Prefill tokens/s = prompt /
// (time to the first sampled token); decode tokens/s = (generated - 1) / (time from the first to the last
// sampled token): each of those steps is one single-token llama_decode after the prompt, like llama-bench's
// `-n N -d <prompt>`. generate() stops at an end-of-turn token: the number actually decoded is reported
// (`n_decode`), and the driver (bench/compare_llama_bench.py) warns when it is short.
//
// Prints one JSON line per run: {"mode", "rep", "n_prompt", "n_decode", "prefill_tps", "decode_tps", ...}.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>

#include "engine/generate.h"
#include "engine/model.h"
#include "methods/coe.h"
#include "util/error.h"

using namespace kvlens;

namespace {

using clock_type = std::chrono::steady_clock;

struct Run {
    int n_decode = 0;
    double prefill_tps = 0, decode_tps = 0;
    // The decode phase's wall-clock and the part of it inside llama_decode (the rest: the loop around it,
    // i.e. sampling, step statistics, logits copies, capture observers).
    double decode_wall_s = 0, decode_in_llama_s = 0;
    std::string stop;
    int n_graph_reused = 0;  // llama.cpp reused the previous compute graph instead of building one
};

Run run_once(const Model& model, const SessionParams& sp, const std::vector<llama_token>& prompt,
             int n_decode, bool scores) {
    SessionParams p = sp;
    p.capture = scores;  // as `kvlens generate`: no eval callback unless something is captured
    Session session(model, p);
    std::unique_ptr<CoeScorer> scorer;
    if (scores) scorer = std::make_unique<CoeScorer>(session, 0, (int)prompt.size());
    GenerateParams gp;
    gp.max_tokens = n_decode + 1;  // the first token comes from the prefill's logits
    gp.sampling.temperature = 0;   // greedy, as llama-bench's timing has no sampling at all
    clock_type::time_point t_first, t_last;
    double llama_first = 0, llama_last = 0;
    bool first = true;
    gp.on_token = [&](int, const Generation&) {
        t_last = clock_type::now();
        llama_last = session.decode_seconds();
        if (first) t_first = t_last, llama_first = llama_last;
        first = false;
        return true;
    };
    const auto t0 = clock_type::now();
    const Generation g = generate(session, {prompt}, gp).at(0);
    Run r;
    r.n_decode = (int)g.output.size() - 1;
    r.stop = to_string(g.stop);
    r.prefill_tps = prompt.size() / std::chrono::duration<double>(t_first - t0).count();
    const double dt = std::chrono::duration<double>(t_last - t_first).count();
    r.decode_tps = r.n_decode > 0 && dt > 0 ? r.n_decode / dt : 0;
    r.decode_wall_s = dt;
    r.decode_in_llama_s = llama_last - llama_first;
    r.n_graph_reused = llama_perf_context(session.ctx()).n_reused;
    if (scorer) {
        // Read the scores as the CLI does at the end (part of its cost), and check the chain saw every token.
        const CoeResult c = scorer->result(g.steps, g.output);
        if (c.n_generated != (int64_t)g.output.size()) throw Error("bench-generate: scorer missed steps");
    }
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"bench-generate: kvlens' generate loop, prefill and decode tokens/s, scores off / on"};
    std::string model_path, modes_arg = "off,scores", fa = "auto", kv_source = "graph";
    int threads = 2, n_prompt = 512, n_decode = 128, reps = 1, batch = 512;
    app.add_option("-m,--model", model_path, "GGUF model")->required();
    app.add_option("-t,--threads", threads, "threads")->capture_default_str();
    app.add_option("--prompt-tokens", n_prompt, "prefill length")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--decode-tokens", n_decode, "decode steps after the first token")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--batch", batch, "max tokens per decode call (llama-bench -b and -ub)")
        ->capture_default_str();
    app.add_option("--reps", reps, "repetitions of each mode (interleaved)")->capture_default_str();
    app.add_option("--modes", modes_arg,
                   "comma-separated: off (a session without capture: no eval callback), scores (CoeScorer)")
        ->capture_default_str();
    app.add_option("--flash-attn", fa, "auto, on or off")->capture_default_str();
    app.add_option("--kv-source", kv_source, "graph or cache")->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    try {
        set_verbose(false);
        std::vector<std::string> modes;
        std::stringstream ss(modes_arg);
        for (std::string m; std::getline(ss, m, ',');) {
            if (m != "off" && m != "scores") throw Error("--modes: unknown mode '" + m + "'");
            modes.push_back(m);
        }
        Model model(ModelParams{model_path});
        std::vector<llama_token> prompt(n_prompt);
        for (int i = 0; i < n_prompt; ++i) prompt[i] = (llama_token)(100 + (i * 37) % 5000);
        SessionParams sp;
        sp.n_ctx = n_prompt + n_decode + 16;
        sp.n_batch = batch;
        sp.n_threads = threads;
        sp.flash_attn = fa == "on" ? FlashAttn::On : fa == "off" ? FlashAttn::Off : FlashAttn::Auto;
        if (fa != "on" && fa != "off" && fa != "auto") throw Error("--flash-attn: auto, on or off");
        sp.capture_source = parse_capture_source(kv_source);
        run_once(model, sp, std::vector<llama_token>(prompt.begin(), prompt.begin() + std::min(n_prompt, 32)),
                 8, false);  // warm-up: page the weights in
        for (int r = 0; r < reps; ++r) {
            for (const std::string& m : modes) {
                const Run x = run_once(model, sp, prompt, n_decode, m == "scores");
                const nlohmann::json j = {{"mode", m},
                                          {"rep", r},
                                          {"n_prompt", n_prompt},
                                          {"n_decode", x.n_decode},
                                          {"stop", x.stop},
                                          {"prefill_tps", x.prefill_tps},
                                          {"decode_tps", x.decode_tps},
                                          {"decode_wall_s", x.decode_wall_s},
                                          {"decode_in_llama_s", x.decode_in_llama_s},
                                          {"n_graph_reused", x.n_graph_reused},
                                          {"threads", threads},
                                          {"batch", batch},
                                          {"flash_attn", fa},
                                          {"kv_source", kv_source}};
                printf("%s\n", j.dump().c_str());
                fflush(stdout);
            }
        }
    } catch (const Error& e) {
        fprintf(stderr, "bench-generate: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
