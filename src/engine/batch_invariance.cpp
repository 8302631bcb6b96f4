#include "engine/batch_invariance.h"

#include <ggml-backend.h>
#include <ggml-cpu.h>

#include <string>

#include "util/error.h"

#ifdef KVLENS_LLAMA_INTERNALS
#include "llama-context.h"  // llama_context::get_sched(), not in llama.h
#endif

namespace kvlens {

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
