// Benchmark (not a test): N samples of one prompt decoded together in one batch, sharing the prompt's KV
// prefix (sample_n), vs N sequential generations of the same prompt (generate(), one sequence each, the
// prompt decoded every time). Both score every sample (a CoeScorer per sequence) and use the same seeds, so
// they produce the same samples; throughput is generated tokens / wall time. Runs alternate (batched,
// sequential, ...) so that drift hits both alike; prints each round and the median ratio.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "engine/chat_template.h"
#include "methods/sampling.h"
#include "util/error.h"

using namespace kvlens;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"bench-sampling: N samples in one batch vs N sequential generations"};
    std::string model_path,
        prompt_text = "What is 47 + 38? Give the final answer on the last line in the format \"Answer: N\".";
    int n = 8, max_tokens = 64, rounds = 3, threads = 0;
    SampleParams sp;
    sp.sampling.temperature = 0.7f;
    sp.sampling.top_k = 0;
    sp.sampling.top_p = 0.95f;
    app.add_option("-m,--model", model_path, "GGUF model")->required();
    app.add_option("-p,--prompt", prompt_text, "user message (chat template of the model applied)");
    app.add_option("-n,--samples", n, "samples N")->check(CLI::Range(1, 64));
    app.add_option("--max-tokens", max_tokens, "tokens per sample at most")->check(CLI::Range(1, 4096));
    app.add_option("--rounds", rounds, "rounds of (batched, sequential)")->check(CLI::Range(1, 100));
    app.add_option("-t,--threads", threads, "CPU threads (0: all)");
    app.add_option("--temp", sp.sampling.temperature, "temperature");
    CLI11_PARSE(app, argc, argv);

    try {
        set_verbose(false);
        Model model(ModelParams{model_path});
        const ModelInfo& mi = model.info();
        const ChatTemplate tmpl = detect_chat_template(mi.chat_template, mi.arch);
        const std::vector<llama_token> prompt =
            model.tokenize(render_chat(tmpl, {{"user", prompt_text}}, true, ThinkMode::Default), true, true);
        sp.n = n;
        sp.max_tokens = max_tokens;

        SessionParams batched_p;
        batched_p.n_seq_max = n;
        batched_p.n_ctx = (int)prompt.size() + n * (max_tokens + 1) + 1;
        batched_p.n_threads = threads;
        SessionParams seq_p = batched_p;
        seq_p.n_seq_max = 1;
        Session batched(model, batched_p), sequential(model, seq_p);

        printf("model %s, prompt %zu tokens, N=%d, max %d tokens, temperature %.2f, threads %d\n",
               model_path.c_str(), prompt.size(), n, max_tokens, sp.sampling.temperature, threads);
        std::vector<double> ratios;
        for (int r = 0; r < rounds; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            const SampleSet set = sample_n(batched, prompt, sp);
            const double tb = seconds_since(t0);
            batched.clear();
            int64_t tok_b = 0;
            for (const SampleOut& o : set.samples) tok_b += (int64_t)o.gen.output.size();

            t0 = std::chrono::steady_clock::now();
            int64_t tok_s = 0, calls_s = sequential.n_decode_calls();
            for (int i = 0; i < n; ++i) {
                CoeScorer scorer(sequential, 0, (int)prompt.size());
                GenerateParams gp;
                gp.max_tokens = max_tokens;
                gp.sampling = sp.sampling;
                gp.sampling.seed = sp.sampling.seed + (uint32_t)i;
                const Generation g = generate(sequential, {prompt}, gp).at(0);
                const CoeResult res = scorer.result(g.steps, g.output);
                tok_s += (int64_t)g.output.size();
                sequential.clear();
            }
            const double ts = seconds_since(t0);
            calls_s = sequential.n_decode_calls() - calls_s;
            const double ratio = (tok_b / tb) / (tok_s / ts);
            ratios.push_back(ratio);
            printf(
                "round %d: batched %lld tokens in %.3f s (%.1f tokens/s, %lld decode calls, %lld tokens "
                "decoded); "
                "sequential %lld tokens in %.3f s (%.1f tokens/s, %lld decode calls); ratio %.2fx\n",
                r + 1, (long long)tok_b, tb, tok_b / tb, (long long)set.n_decode_calls,
                (long long)set.n_tokens_decoded, (long long)tok_s, ts, tok_s / ts, (long long)calls_s, ratio);
        }
        printf("median ratio (batched / sequential tokens/s): %.2fx over %d rounds\n", median(ratios),
               rounds);
    } catch (const Error& e) {
        fprintf(stderr, "bench-sampling: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
