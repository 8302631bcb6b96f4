// Batch-invariant decoding: a sequence's logits do not depend on which other sequences share its decode
// calls (a server's concurrent requests, `eval --parallel`), so greedy outputs do not change with load.
//
// Why llama.cpp's CPU path is not invariant by default (measured, docs/results/bench/README.md): the
// repacked weight layouts and the IQ panel gemm compute a row differently in a batch of 4+ rows than alone;
// flash attention tiles the KV cells of a multi-token batch and splits them across threads for a one-token
// batch, so a row's sums run in an order that depends on the other sequences' cells; softmax attention sums
// over those masked cells in SIMD lanes whose order depends on where they sit. What stays invariant: ggml's
// reference kernels (one vec_dot per output element, flash attention one query row at a time over the cells
// in order, skipping masked ones), on weights as the file has them, provided each sequence's cells are in the
// order of its positions (a continuous batch that frees cells keeps it: Batcher's keep_cell_order).
#pragma once

#include <string>

struct llama_context;

namespace kvlens {

// Throws Error when the GGUF file at `path` has a matrix (2-D tensor) stored as F32, F16 or BF16 and this
// build has llamafile's sgemm: it sums a batch of 2+ rows in another order than ggml's single-row kernel,
// so those weights' products change with batching whatever else is done (measured on the project's F16
// reasoner). Quantised matrices (Q8_0, Q4_K, ...) give the same bits either way.
void check_batch_invariant_weights(const std::string& path);

// Switches every backend of `ctx` to ggml's reference kernels (ggml_backend_cpu_set_use_ref: no tiling, no
// KV chunking, no op fusion). Throws Error when a backend other than the CPU is in use (their kernels make
// no such promise) or when kvlens was built without llama.cpp's source tree (the scheduler is not in
// llama.h).
void use_row_independent_kernels(llama_context* ctx);

}  // namespace kvlens
