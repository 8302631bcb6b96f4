// Reads a sequence's KV cache back through llama_state_seq_get_data, the engine's own serialisation:
// the independent reference that tests compare captured K/V against. The format is version-specific
// (llama.cpp v0.4.0, llama-kv-cache.cpp state_write); fine for a snapshot, too slow per token.
#pragma once

#include <llama.h>

#include <vector>

namespace kvlens {

struct CacheSnapshot {
    std::vector<llama_pos> pos;            // per cell, in cache order
    std::vector<std::vector<float>> k, v;  // per layer: n_cells x k_width (v_width), converted to F32
    int k_width = 0, v_width = 0;
    bool v_trans = false;  // V stored transposed in the cache (flash attention off)
    int n_cells() const { return (int)pos.size(); }
    // Row of the cell at position p (first match), or nullptr.
    const float* k_row(int layer, llama_pos p) const;
    const float* v_row(int layer, llama_pos p) const;
};

// Throws kvlens::Error if the serialised state does not have the layout this reader knows.
CacheSnapshot read_seq_state(llama_context* ctx, llama_seq_id seq);

}  // namespace kvlens
