// KV capture: reads K (as written to the cache, post-RoPE), V and optionally the residual stream out of the
// llama.cpp graph while it is computed, through the scheduler's eval callback (cb_eval), and hands the rows
// to subscribed observers with their sequence id and position.
//
// Which graph node is which (llama-cpp-notes.md): "Kcur-N" appears several times; the one written to the
// cache is the GGML_OP_ROPE node. "Vcur-N" is the last reshape/view (3-D). "l_out-N" is the residual stream
// after layer N; for the last layer it only has rows for tokens that requested logits. "inp_embd" is the
// token embedding (hidden state 0).
//
// Cost: a node is requested from the scheduler only when some observer wants it, so with no observer the
// graph runs exactly as without capture. Each requested node splits the graph; wanted nodes are batched so
// that a layer's K, V and the previous layer's l_out cost one split together (see kv_capture.cpp).
//
// Two sources for K and V:
//   Graph  the F32 graph nodes as computed, one split per layer (this class's default; sessions' until #14);
//   Cache  (SessionParams' default: cheaper, docs/results/bench) the KV cache itself, read once per batch
//          after the last layer's cache write (one split per batch, whatever the layer count): the values
//          as stored, i.e. rounded to the cache type (F16 by default), exactly what attention reads and
//          what llama_state_seq_get_data returns. The cells the batch was written to come from the
//          write's own index tensor. Hidden states still come from the graph.
#pragma once

#include <llama.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kvlens {

enum class Tap : uint8_t {
    K = 0,       // [n_head_kv * head_dim] per token, post-RoPE (and post k_norm for Qwen3)
    V = 1,       // [n_head_kv * head_dim] per token
    Hidden = 2,  // [n_embd] per token: residual stream after layer `layer` (l_out)
    Embd = 3,    // [n_embd] per token: token embeddings (layer = -1)
};

// Rows of one tap of one layer for some tokens of the current batch.
struct TapRows {
    Tap tap;
    int layer;
    int n_rows;
    int width;                 // floats per row
    const float* data;         // n_rows x width, contiguous
    const int32_t* batch_idx;  // row i belongs to token batch_idx[i] of the batch being decoded
    const llama_batch* batch;  // seq ids: batch->seq_id[j][0..n_seq_id[j]), position: batch->pos[j]

    const float* row(int i) const { return data + (size_t)i * width; }
    llama_pos pos(int i) const { return batch->pos[batch_idx[i]]; }
    // True when the token of row i belongs to sequence `seq`.
    bool has_seq(int i, llama_seq_id seq) const;
};

class KvObserver {
public:
    virtual ~KvObserver() = default;
    // Asked once per graph node candidate; must be cheap. layer = -1 for Tap::Embd.
    virtual bool wants(Tap tap, int layer) const = 0;
    virtual void on_rows(const TapRows& rows) = 0;
};

enum class CaptureSource : uint8_t { Graph, Cache };
const char* to_string(CaptureSource s);                    // "graph" | "cache"
CaptureSource parse_capture_source(const std::string& s);  // else Error naming the value

class KvCapture {
public:
    explicit KvCapture(int n_layer, CaptureSource source = CaptureSource::Graph)
        : n_layer_(n_layer), source_(source), writes_(n_layer) {}
    CaptureSource source() const { return source_; }

    // Observers are borrowed: remove them before they die. Order of delivery = order of subscription.
    // subscribe throws Error after refuse_observers() (a session made without capture: no eval callback).
    void subscribe(KvObserver* obs);
    void refuse_observers() { refused_ = true; }
    bool accepts_observers() const { return !refused_; }
    void unsubscribe(KvObserver* obs);
    bool empty() const { return observers_.empty(); }

    // The session calls this before each llama_decode with the batch it passes, and with nullptr after.
    void begin_batch(const llama_batch* batch);

    // The llama.cpp eval callback; user_data is the KvCapture.
    static bool eval_callback(struct ggml_tensor* t, bool ask, void* user_data);

    // Rows delivered so far (all taps), and wanted nodes never delivered (0 unless the graph has a layout
    // this capture does not know), for tests and diagnostics.
    int64_t rows_delivered() const { return rows_delivered_; }
    // Nodes handed over by the scheduler so far: each one ends a graph split (the capture's cost).
    int64_t nodes_requested() const { return nodes_requested_; }
    int64_t nodes_lost() const { return nodes_lost_; }
    // Times llama.cpp called the eval callback at all (0 in a session without capture).
    int64_t callbacks() const { return callbacks_; }

private:
    struct Pending {
        const struct ggml_tensor* t;
        Tap tap;
        int layer;
    };
    // The cache writes (SET_ROWS into cache_k_l<N> / cache_v_l<N>) of the graph being computed.
    struct CacheWrites {
        const struct ggml_tensor* k = nullptr;
        const struct ggml_tensor* v = nullptr;
    };
    bool ask(struct ggml_tensor* t, Tap tap, int layer);
    bool wanted(Tap tap, int layer) const;
    void deliver(const struct ggml_tensor* t, Tap tap, int layer);
    bool on_cache_write(struct ggml_tensor* t, bool ask);
    void deliver_from_cache(const struct ggml_tensor* trigger);

    int n_layer_;
    CaptureSource source_;
    std::vector<CacheWrites> writes_;
    std::vector<int64_t> cells_;  // scratch: cache cell of each row of the batch
    int32_t cache_consumed_ = 0;  // rows of the batch delivered from the cache so far
    std::vector<KvObserver*> observers_;
    const llama_batch* batch_ = nullptr;
    std::vector<int32_t> out_idx_;   // batch indices of the tokens with logits (rows of the last l_out)
    std::vector<int32_t> consumed_;  // rows consumed so far in this batch, per (tap, layer) slot
    std::vector<int32_t> idx_;       // scratch: batch indices of the rows being delivered
    std::vector<float> scratch_;     // scratch: contiguous copy of strided or device tensors
    std::vector<Pending> pending_;   // wanted nodes waiting for their trigger (see kv_capture.cpp)
    int64_t rows_delivered_ = 0;
    int64_t nodes_requested_ = 0;
    int64_t nodes_lost_ = 0;
    int64_t callbacks_ = 0;
    bool refused_ = false;
};

}  // namespace kvlens
