// Uses an installed kvlens (find_package(kvlens), kvlens::kvlens): loads a GGUF, generates a few tokens
// greedily with a CoeScorer subscribed to the session's K/V capture, and prints the answer's KV-CoE and
// hidden-state CoE scores.
// Usage: kvlens-consumer MODEL.gguf [PROMPT]
#include <cstdio>
#include <string>
#include <vector>

#include "engine/generate.h"
#include "engine/model.h"
#include "methods/coe.h"
#include "util/error.h"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [PROMPT]\n", argv[0]);
        return 2;
    }
    const std::string prompt_text = argc > 2 ? argv[2] : "The chain of embeddings tells";
    try {
        kvlens::set_verbose(false);
        kvlens::Model model(kvlens::ModelParams{argv[1]});
        kvlens::SessionParams sp;
        sp.n_ctx = 256;
        sp.n_threads = 2;
        kvlens::Session session(model, sp);

        const std::vector<llama_token> prompt = model.tokenize(prompt_text, true);
        kvlens::CoeScorer scorer(session, 0, (int)prompt.size());  // before the prompt is decoded
        kvlens::GenerateParams gp;
        gp.max_tokens = 8;  // sampling defaults: temperature 0, greedy
        const kvlens::Generation g = kvlens::generate(session, {prompt}, gp).at(0);

        const kvlens::CoeResult r = scorer.result(g.steps);
        const auto named = r.named();
        std::printf("model %s: %d layers, %zu tokens generated\n", model.info().arch.c_str(),
                    model.info().n_layer, g.output.size());
        std::printf("kv_coe_c %.6f\n", named.at("kv_coe_c"));
        std::printf("hs_coe_c %.6f\n", named.at("hs_coe_c"));
    } catch (const kvlens::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
