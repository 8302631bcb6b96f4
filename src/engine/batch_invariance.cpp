#include "engine/batch_invariance.h"

#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <gguf.h>

#include <cctype>
#include <string>

#include "util/error.h"

#ifdef KVLENS_LLAMA_INTERNALS
#include "llama-context.h"  // llama_context::get_sched(), not in llama.h
#endif

namespace kvlens {

void check_batch_invariant_weights(const std::string& path) {
    if (!ggml_cpu_has_llamafile()) return;
    ggml_context* meta = nullptr;
    gguf_context* g = gguf_init_from_file(path.c_str(), {/*no_alloc=*/true, /*ctx=*/&meta});
    if (g == nullptr) throw Error("model '" + path + "': not a readable GGUF file");
    // token_embd is only looked up by row, unless the model has no output matrix and multiplies by it.
    const bool tied = ggml_get_tensor(meta, "output.weight") == nullptr;
    std::string bad;
    for (ggml_tensor* t = ggml_get_first_tensor(meta); t != nullptr && bad.empty();
         t = ggml_get_next_tensor(meta, t)) {
        const bool matrix =
            t->ne[0] > 1 && t->ne[1] > 1 && (tied || std::string(t->name) != "token_embd.weight");
        if (matrix && (t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16)) {
            std::string type = ggml_type_name(t->type);
            for (char& c : type) c = (char)std::toupper((unsigned char)c);
            bad = std::string(t->name) + "' is " + type;
        }
    }
    gguf_free(g);
    ggml_free(meta);
    if (!bad.empty())
        throw Error(
            "batch_invariant: model '" + path + "': tensor '" + bad +
            ": llama.cpp multiplies a batch of rows by such a matrix (llamafile sgemm) in another order "
            "than one row, so outputs would still change with batching; use a quantised model (Q8_0, "
            "Q4_K_M, ...)");
}

void use_row_independent_kernels(llama_context* ctx) {
#ifndef KVLENS_LLAMA_INTERNALS
    (void)ctx;
    throw Error(
        "batch_invariant: needs kvlens built with llama.cpp's source tree (an installed llama.cpp does not "
        "expose its scheduler, whose CPU backend must be switched to its reference kernels)");
#else
    ggml_backend_sched_t sched = ctx->get_sched();
    const int n = ggml_backend_sched_get_n_backends(sched);
    for (int i = 0; i < n; i++) {
        ggml_backend_t b = ggml_backend_sched_get_backend(sched, i);
        if (!ggml_backend_is_cpu(b))
            throw Error(std::string("batch_invariant: only the CPU backend has row-independent kernels; this "
                                    "context also uses ") +
                        ggml_backend_name(b) + " (use a CPU-only build)");
    }
    for (int i = 0; i < n; i++) ggml_backend_cpu_set_use_ref(ggml_backend_sched_get_backend(sched, i), true);
#endif
}

}  // namespace kvlens
