// Benchmark (not a test): the memory of one sequence's score state against the KV cache of the same
// sequence, at N tokens (default 1024 and 8192). Both measured on a real decode:
//   - score state: CoeScorer::state_bytes() (token-axis KV-CoE, layer-axis KV chains, hidden-state CoE: what
//     `kvlens generate --scores`, `serve` and `eval coe` keep per sequence) after N producer positions. The
//     N tokens are decoded as one prompt in batches with every position a producer position (scorer started
//     with n_prompt = 1, logits on every token, so the hidden chain sees every position, as it sees every
//     generated token): the state then holds what an answer of N tokens leaves, without generating N tokens
//     one by one (same bytes: the accumulators do not depend on how positions arrive);
//   - KV cache: llama_state_seq_get_size() of that sequence (the cache's K and V rows of every layer, as
//     stored, F16 by default, plus llama.cpp's small per-sequence header), and the rows alone computed from
//     the model's shape (n_layer x 2 x kv_width x 2 bytes x N).
// Prints one JSON line per N; the ratio is score state / KV cache (the target: <= 1% at 1K tokens).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>

#include "engine/model.h"
#include "methods/coe.h"
#include "util/error.h"

using namespace kvlens;

int main(int argc, char** argv) {
    CLI::App app{"bench-score-state: per-sequence score state vs the KV cache bytes of the same sequence"};
    std::string model_path;
    std::vector<int> lengths{1024, 8192};
    int threads = 2, batch = 512;
    app.add_option("-m,--model", model_path, "GGUF model")->required();
    app.add_option("-t,--threads", threads, "threads")->capture_default_str();
    app.add_option("--tokens", lengths, "sequence lengths (tokens)")->capture_default_str()->delimiter(',');
    app.add_option("--batch", batch, "tokens per decode call")->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    try {
        set_verbose(false);
        Model model(ModelParams{model_path});
        const ModelInfo& mi = model.info();
        for (int n : lengths) {
            if (n < 2) throw Error("--tokens: each length must be >= 2");
            SessionParams sp;
            sp.n_ctx = n + 16;
            sp.n_batch = batch;
            sp.n_threads = threads;
            Session session(model, sp);
            size_t peak_state = 0;
            {
                CoeScorer scorer(session, 0, 1);
                for (int p0 = 0; p0 < n; p0 += batch) {
                    std::vector<BatchToken> b;
                    for (int p = p0; p < std::min(n, p0 + batch); ++p)
                        b.push_back({(llama_token)(100 + (p * 37) % 5000), (llama_pos)p, 0, true});
                    session.decode(b, false);
                    peak_state = std::max(peak_state, scorer.state_bytes());
                }
                if (scorer.token().count() != n || scorer.hidden().count() != n)
                    throw Error("bench-score-state: the scorer missed positions");
                const size_t state = scorer.state_bytes();
                const size_t seq_state = llama_state_seq_get_size(session.ctx(), 0);
                const size_t kv_rows = (size_t)mi.n_layer * 2 * (size_t)mi.kv_width() * 2 * (size_t)n;
                const nlohmann::json j = {
                    {"model", mi.name},
                    {"arch", mi.arch},
                    {"n_layer", mi.n_layer},
                    {"n_embd", mi.n_embd},
                    {"kv_width", mi.kv_width()},
                    {"tokens", n},
                    {"score_state_bytes", state},
                    {"score_state_peak_bytes", peak_state},
                    {"kv_coe_token_bytes", scorer.token().state_bytes()},
                    {"kv_layer_bytes", scorer.kv_layer().state_bytes()},
                    {"hs_coe_bytes", scorer.hidden().state_bytes()},
                    {"kv_cache_seq_state_bytes", seq_state},
                    {"kv_cache_rows_f16_bytes", kv_rows},
                    {"ratio_state_over_kv", (double)state / (double)seq_state},
                };
                printf("%s\n", j.dump().c_str());
                fflush(stdout);
            }
        }
    } catch (const Error& e) {
        fprintf(stderr, "bench-score-state: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
