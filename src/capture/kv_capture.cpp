#include "capture/kv_capture.h"

#include <ggml-backend.h>
#include <ggml.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace kvlens {

bool TapRows::has_seq(int i, llama_seq_id seq) const {
    const int j = batch_idx[i];
    for (int s = 0; s < batch->n_seq_id[j]; ++s) {
        if (batch->seq_id[j][s] == seq) return true;
    }
    return false;
}

void KvCapture::subscribe(KvObserver* obs) {
    if (std::find(observers_.begin(), observers_.end(), obs) == observers_.end()) observers_.push_back(obs);
}

void KvCapture::unsubscribe(KvObserver* obs) {
    observers_.erase(std::remove(observers_.begin(), observers_.end(), obs), observers_.end());
}

void KvCapture::begin_batch(const llama_batch* batch) {
    // Remembered nodes whose trigger never came are lost: count them (tests check this stays 0).
    nodes_lost_ += (int64_t)pending_.size();
    pending_.clear();
    batch_ = batch;
    out_idx_.clear();
    if (batch == nullptr) return;
    for (int j = 0; j < batch->n_tokens; ++j) {
        if (batch->logits == nullptr ? j == batch->n_tokens - 1 : batch->logits[j] != 0)
            out_idx_.push_back(j);
    }
    consumed_.assign(4 * (n_layer_ + 1), 0);
}

bool KvCapture::wanted(Tap tap, int layer) const {
    for (const KvObserver* o : observers_) {
        if (o->wants(tap, layer)) return true;
    }
    return false;
}

// "<prefix><N>" with N a layer number, exactly (views have suffixes like " (view)" and must not match).
static bool parse_layer_name(const char* name, const char* prefix, int* layer) {
    const size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0) return false;
    const char* p = name + n;
    if (*p < '0' || *p > '9') return false;
    char* end = nullptr;
    const long v = strtol(p, &end, 10);
    if (*end != '\0') return false;
    *layer = (int)v;
    return true;
}

// Identifies the nodes we read. Returns false for every other node.
static bool classify(const ggml_tensor* t, Tap* tap, int* layer) {
    const char* name = t->name;
    switch (name[0]) {
        case 'K':  // the K written to the cache is the RoPE output
            if (t->op == GGML_OP_ROPE && parse_layer_name(name, "Kcur-", layer)) {
                *tap = Tap::K;
                return true;
            }
            return false;
        case 'V':  // the last "Vcur-N" is the 3-D reshape (separate Q/K/V) or view (fused QKV)
            if ((t->op == GGML_OP_RESHAPE || t->op == GGML_OP_VIEW) &&
                parse_layer_name(name, "Vcur-", layer)) {
                *tap = Tap::V;
                return true;
            }
            return false;
        case 'l':
            if (parse_layer_name(name, "l_out-", layer)) {
                *tap = Tap::Hidden;
                return true;
            }
            return false;
        default:  // token embeddings: the get_rows of token_embd.weight
            if (t->op == GGML_OP_GET_ROWS && t->src[0] != nullptr &&
                strcmp(t->src[0]->name, "token_embd.weight") == 0) {
                *tap = Tap::Embd;
                *layer = -1;
                return true;
            }
            return false;
    }
}

// Each node requested from the scheduler ends a graph split (a sync and a thread-pool restart: most of the
// capture's cost), so wanted nodes are batched: a node whose memory is still alive at a later wanted node is
// only remembered when asked about and delivered with that later one (the "trigger"). In llama.cpp graphs:
//   - K and V of a layer: both are consumed by the cache writes, which come after both; the later of the
//     two (in graph order) is the trigger of the layer;
//   - the token embeddings and l_out of layer l-1 are consumed by layer l's residual add (ffn_inp), which
//     comes after layer l's K and V: they ride on layer l's trigger.
// Anything else (the last layer's l_out, layers without K/V taps) is requested on its own.
bool KvCapture::ask(ggml_tensor* t, Tap tap, int layer) {
    if (!wanted(tap, layer)) return false;
    const auto has_trigger = [&](int l) { return l < n_layer_ && (wanted(Tap::K, l) || wanted(Tap::V, l)); };
    bool defer = false;
    if (tap == Tap::Embd) {
        defer = has_trigger(0);
    } else if (tap == Tap::Hidden) {
        defer = has_trigger(layer + 1);
    } else {
        const Tap other = tap == Tap::K ? Tap::V : Tap::K;
        const bool other_pending = std::any_of(pending_.begin(), pending_.end(), [&](const Pending& p) {
            return p.tap == other && p.layer == layer;
        });
        defer = wanted(other, layer) && !other_pending;  // the first of the pair waits for the second
    }
    if (defer) pending_.push_back({t, tap, layer});
    return !defer;
}

bool KvCapture::eval_callback(ggml_tensor* t, bool ask, void* user_data) {
    auto* self = static_cast<KvCapture*>(user_data);
    if (self->observers_.empty() || self->batch_ == nullptr) return false;
    Tap tap;
    int layer;
    if (!classify(t, &tap, &layer) || layer >= self->n_layer_) return false;
    if (ask) return self->ask(t, tap, layer);
    for (const Pending& p : self->pending_) self->deliver(p.t, p.tap, p.layer);
    self->pending_.clear();
    self->deliver(t, tap, layer);
    return true;  // keep computing
}

void KvCapture::deliver(const ggml_tensor* t, Tap tap, int layer) {
    if (t->type != GGML_TYPE_F32) return;  // every node we tap is F32 in llama.cpp graphs
    const bool per_head = tap == Tap::K || tap == Tap::V;
    const int64_t d0 = t->ne[0], d1 = per_head ? t->ne[1] : 1;
    const int width = (int)(d0 * d1);
    const int n_rows = (int)(per_head ? t->ne[2] : t->ne[1]);
    const size_t row_stride = per_head ? t->nb[2] : t->nb[1];

    // Map rows to batch tokens. The last layer's residual stream only holds the rows that output logits.
    int32_t& consumed = consumed_[(int)tap * (n_layer_ + 1) + layer + 1];
    const bool outputs_only = tap == Tap::Hidden && layer == n_layer_ - 1;
    idx_.resize(n_rows);
    for (int i = 0; i < n_rows; ++i) {
        const int k = consumed + i;
        idx_[i] = outputs_only ? (k < (int)out_idx_.size() ? out_idx_[k] : -1) : k;
        if (idx_[i] < 0 || idx_[i] >= batch_->n_tokens) return;  // not the layout we know: deliver nothing
    }
    consumed += n_rows;

    // Contiguous host tensors are read in place; strided views and device tensors are copied row by row.
    const float* data = nullptr;
    const bool host = t->buffer == nullptr || ggml_backend_buffer_is_host(t->buffer);
    if (host && ggml_is_contiguous(t)) {
        data = static_cast<const float*>(t->data);
    } else {
        scratch_.resize((size_t)n_rows * width);
        for (int i = 0; i < n_rows; ++i) {
            for (int64_t h = 0; h < d1; ++h) {
                float* dst = scratch_.data() + (size_t)i * width + h * d0;
                const size_t off = i * row_stride + h * t->nb[1];  // h is 0 for 2-D tensors
                if (host) {
                    memcpy(dst, static_cast<const char*>(t->data) + off, d0 * sizeof(float));
                } else {
                    ggml_backend_tensor_get(t, dst, off, d0 * sizeof(float));
                }
            }
        }
        data = scratch_.data();
    }

    TapRows rows{tap, layer, n_rows, width, data, idx_.data(), batch_};
    for (KvObserver* o : observers_) {
        if (o->wants(tap, layer)) o->on_rows(rows);
    }
    rows_delivered_ += n_rows;
}

}  // namespace kvlens
