// Benchmark (not a test): prefill and decode throughput with KV capture off vs on, in one process, runs
// interleaved (off, graph, cache, off, graph, cache, ...) so that drift hits all alike. "On" streams every
// layer's K and V of the sequence into a KV-CoE-style pool (kv_cat, mean over positions, one vector per
// layer), read from the graph (one split per layer) or from the KV cache (one split per batch); --hidden
// also taps the residual stream. Prints medians and the on/off ratios of both sources.
// "Off" is a session without capture (SessionParams::capture = false: no eval callback at all), as
// `kvlens generate` runs without scores or features.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "capture/observers.h"
#include "engine/model.h"
#include "util/error.h"

using namespace kvlens;

namespace {

struct HiddenSink : KvObserver {
    double sum = 0;
    bool wants(Tap tap, int) const override { return tap == Tap::Hidden; }
    void on_rows(const TapRows& r) override { sum += r.row(0)[0]; }
};

// Diagnostic: K of the first n layers only (how the cost grows with the number of captured nodes).
struct KSink : KvObserver {
    int n_layers;
    double sum = 0;
    explicit KSink(int n) : n_layers(n) {}
    bool wants(Tap tap, int layer) const override { return tap == Tap::K && layer < n_layers; }
    void on_rows(const TapRows& r) override { sum += r.row(0)[0]; }
};
int g_k_only_layers = 0;  // > 0: capture = KSink(g_k_only_layers) instead of the pool

struct Timing {
    double prefill_tps, decode_tps;
};

Timing run_once(const Model& model, const SessionParams& sp, const std::vector<llama_token>& prompt,
                int n_decode, bool capture, bool hidden) {
    const ModelInfo& mi = model.info();
    Session session(model, sp);
    KvPool pool(PoolSpec{}, mi.n_layer, mi.n_head_kv, mi.head_dim);
    PoolObserver obs(pool, 0);
    HiddenSink sink;
    KSink ksink(g_k_only_layers);
    if (capture) session.capture().subscribe(g_k_only_layers > 0 ? (KvObserver*)&ksink : &obs);
    if (capture && hidden) session.capture().subscribe(&sink);

    using clock = std::chrono::steady_clock;
    std::vector<BatchToken> batch;
    for (size_t i = 0; i < prompt.size(); ++i)
        batch.push_back({prompt[i], (llama_pos)i, 0, i + 1 == prompt.size()});
    auto t0 = clock::now();
    session.decode(batch);
    auto t1 = clock::now();
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();

    // Greedy decode of a fixed number of tokens (end-of-turn ignored: the length must be the same each run).
    llama_token tok = 0;
    const int n_vocab = mi.n_vocab;
    int row = (int)prompt.size() - 1;
    t0 = clock::now();
    for (int i = 0; i < n_decode; ++i) {
        const float* l = session.logits(row);
        tok = (llama_token)(std::max_element(l, l + n_vocab) - l);
        session.decode({{tok, (llama_pos)(prompt.size() + i), 0, true}});
        row = 0;
    }
    t1 = clock::now();
    const double decode_s = std::chrono::duration<double>(t1 - t0).count();
    if (capture && g_k_only_layers == 0 && pool.count() != (int64_t)(prompt.size() + n_decode))
        throw Error("bench: capture missed rows");
    return {prompt.size() / prefill_s, n_decode / decode_s};
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"KV capture overhead: prefill and decode tokens/s, capture off vs on, one process"};
    std::string model_path;
    int threads = 2, n_prompt = 256, n_decode = 128, reps = 5;
    bool hidden = false;
    app.add_option("-m,--model", model_path, "GGUF model")->required();
    app.add_option("-t,--threads", threads, "threads")->capture_default_str();
    app.add_option("--prompt-tokens", n_prompt, "prefill length")->capture_default_str();
    app.add_option("--decode-tokens", n_decode, "decode steps")->capture_default_str();
    app.add_option("--reps", reps, "repetitions of each mode (interleaved)")->capture_default_str();
    app.add_flag("--hidden", hidden, "also capture the residual stream (l_out) of every layer");
    app.add_option("--k-only-layers", g_k_only_layers, "diagnostic: capture only K of the first N layers")
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    try {
        set_verbose(false);
        Model model(ModelParams{model_path});
        // A fixed, model-independent prompt: token ids cycling through the vocabulary's lower range.
        std::vector<llama_token> prompt(n_prompt);
        for (int i = 0; i < n_prompt; ++i) prompt[i] = (llama_token)(100 + (i * 37) % 5000);
        SessionParams sp;
        sp.n_ctx = n_prompt + n_decode + 16;
        sp.n_batch = n_prompt;
        sp.n_threads = threads;
        run_once(model, sp, prompt, 8, false, false);  // warm-up (page in the weights)
        // Mode 0: capture off; 1: K/V from the graph; 2: K/V from the cache.
        std::vector<double> pf[3], dc[3];
        for (int r = 0; r < reps; ++r) {
            for (int mode = 0; mode < 3; ++mode) {
                SessionParams msp = sp;
                msp.capture_source = mode == 2 ? CaptureSource::Cache : CaptureSource::Graph;
                msp.capture = mode > 0;  // off: no eval callback, as `kvlens generate` without scores
                const Timing t = run_once(model, msp, prompt, n_decode, mode > 0, hidden);
                pf[mode].push_back(t.prefill_tps);
                dc[mode].push_back(t.decode_tps);
            }
        }
        printf(
            "model: %s (%d layers), threads: %d, prompt %d tokens, decode %d tokens, %d reps each, capture: "
            "K+V%s\n",
            model_path.c_str(), model.info().n_layer, threads, n_prompt, n_decode, reps,
            hidden ? "+l_out" : "");
        // Runs are interleaved, so each "on" run is paired with the "off" run of its round: the median of
        // the paired ratios is robust to the machine's drift; the ratio of medians is shown beside it.
        printf("%-8s %-6s %12s %12s %14s %16s\n", "phase", "source", "off tok/s", "on tok/s", "on/off median",
               "paired ratios");
        for (int phase = 0; phase < 2; ++phase) {
            const std::vector<double>* v = phase == 0 ? pf : dc;
            for (int mode = 1; mode < 3; ++mode) {
                std::vector<double> paired;
                for (int r = 0; r < reps; ++r) paired.push_back(v[mode][r] / v[0][r]);
                printf("%-8s %-6s %12.1f %12.1f %14.3f %16.3f\n", phase == 0 ? "prefill" : "decode",
                       mode == 1 ? "graph" : "cache", median(v[0]), median(v[mode]),
                       median(v[mode]) / median(v[0]), median(paired));
            }
        }
    } catch (const Error& e) {
        fprintf(stderr, "bench-capture: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
