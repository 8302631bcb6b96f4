// Uses an installed kvlens (find_package(kvlens), kvlens::kvlens) through its public API only
// (<kvlens/kvlens.h>): loads a GGUF, answers a prompt greedily with its scores, embeds two texts, reads the
// raw K/V of a text, and shows the documented error of a missing model file.
// Usage: kvlens-consumer MODEL.gguf [PROMPT]
#include <kvlens/kvlens.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#if KVLENS_VERSION_MAJOR != 0
#error "built for kvlens 0.x"
#endif

namespace {

bool ok(kvlens_status s, const char* what) {
    if (s == KVLENS_OK) return true;
    std::fprintf(stderr, "error: %s: %s (%s)\n", what, kvlens_last_error(), kvlens_status_name(s));
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [PROMPT]\n", argv[0]);
        return 2;
    }
    const std::string prompt = argc > 2 ? argv[2] : "The chain of embeddings tells";
    std::printf("kvlens %s (header %s)\n", kvlens_version(), KVLENS_VERSION_STRING);

    kvlens_model* m = nullptr;
    const kvlens_status missing = kvlens_model_load("/nonexistent.gguf", kvlens_model_default_params(), &m);
    std::printf("missing model: %s\n", kvlens_status_name(missing));

    if (!ok(kvlens_model_load(argv[1], kvlens_model_default_params(), &m), "load")) return 1;
    const kvlens_model_ptr model(m);
    kvlens_model_info info;
    if (!ok(kvlens_model_get_info(model.get(), &info), "info")) return 1;

    kvlens_session_params sp = kvlens_session_default_params();
    sp.n_ctx = 256;
    sp.n_threads = 2;
    kvlens_session* s = nullptr;
    if (!ok(kvlens_session_open(model.get(), sp, &s), "session")) return 1;
    const kvlens_session_ptr session(s);

    kvlens_generate_params gp = kvlens_generate_default_params();
    gp.max_tokens = 8;  // greedy by default
    kvlens_generation g;
    if (!ok(kvlens_generate(session.get(), prompt, gp, &g), "generate")) return 1;
    std::printf("model %s: %d layers, %zu tokens generated (%s)\n", info.arch.c_str(), info.n_layer,
                g.output_tokens.size(), g.stop.c_str());
    std::printf("kv_coe_c %.6f\n", g.scores.at("kv_coe_c"));
    std::printf("hs_coe_c %.6f\n", g.scores.at("hs_coe_c"));

    kvlens_embeddings e;
    if (!ok(kvlens_embed(session.get(), {"a first text", "another one"}, kvlens_embed_default_params(), &e),
            "embed"))
        return 1;
    double norm = 0;
    for (int i = 0; i < e.width; ++i) norm += (double)e.data[i] * e.data[i];
    std::printf("embeddings %d x %d, |e0| %.4f\n", e.n, e.width, std::sqrt(norm));

    kvlens_kv kv;
    if (!ok(kvlens_kv_of_text(session.get(), prompt, false, &kv), "kv")) return 1;
    std::printf("kv %d x %d x %d\n", kv.n_layer, kv.n_tokens, kv.kv_width);
    return 0;
}
