#include "capture/kv_capture.h"

#include <ggml-backend.h>
#include <ggml.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "util/error.h"

namespace kvlens {

bool TapRows::has_seq(int i, llama_seq_id seq) const {
    const int j = batch_idx[i];
    for (int s = 0; s < batch->n_seq_id[j]; ++s) {
        if (batch->seq_id[j][s] == seq) return true;
    }
    return false;
}

void KvCapture::subscribe(KvObserver* obs) {
    if (refused_)
        throw Error(
            "capture: this session was made with capture off (SessionParams::capture = false, no eval "
            "callback); scores, features, embeddings and routing need it on");
    if (std::find(observers_.begin(), observers_.end(), obs) == observers_.end()) observers_.push_back(obs);
}

void KvCapture::unsubscribe(KvObserver* obs) {
    observers_.erase(std::remove(observers_.begin(), observers_.end(), obs), observers_.end());
}

const char* to_string(CaptureSource s) {
    return s == CaptureSource::Cache ? "cache" : "graph";
}

CaptureSource parse_capture_source(const std::string& s) {
    if (s == "graph") return CaptureSource::Graph;
    if (s == "cache") return CaptureSource::Cache;
    throw Error("K/V source '" + s + "': expected graph or cache");
}

void KvCapture::begin_batch(const llama_batch* batch) {
    std::fill(writes_.begin(), writes_.end(), CacheWrites{});
    cache_consumed_ = 0;
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
    // (Reading K/V from the cache leaves no per-layer split for l_out to ride on.)
    const auto has_trigger = [&](int l) {
        return source_ == CaptureSource::Graph && l < n_layer_ && (wanted(Tap::K, l) || wanted(Tap::V, l));
    };
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
    ++self->callbacks_;
    if (self->observers_.empty() || self->batch_ == nullptr) return false;
    if (!ask) ++self->nodes_requested_;
    if (self->source_ == CaptureSource::Cache && t->op == GGML_OP_SET_ROWS)
        return self->on_cache_write(t, ask);
    Tap tap;
    int layer;
    if (!classify(t, &tap, &layer) || layer >= self->n_layer_) return false;
    if (self->source_ == CaptureSource::Cache && (tap == Tap::K || tap == Tap::V)) return false;
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

// ---- reading K/V from the cache
// ----------------------------------------------------------------------------

// The tensor a chain of views and reshapes starts from.
static const ggml_tensor* view_root(const ggml_tensor* t) {
    while (t->view_src != nullptr) t = t->view_src;
    return t;
}

// Bytes [offset, offset + n) of a tensor, wherever its buffer lives.
static void read_bytes(const ggml_tensor* t, size_t offset, size_t n, void* dst) {
    if (t->buffer == nullptr || ggml_backend_buffer_is_host(t->buffer)) {
        memcpy(dst, static_cast<const char*>(t->data) + offset, n);
    } else {
        ggml_backend_tensor_get(const_cast<ggml_tensor*>(t), dst, offset, n);
    }
}

// n values of `type` (a whole number of blocks) to floats.
static bool to_floats(ggml_type type, const void* src, float* dst, int64_t n) {
    if (type == GGML_TYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return true;
    }
    const ggml_type_traits* tr = ggml_get_type_traits(type);
    if (tr == nullptr || tr->to_float == nullptr || n % ggml_blck_size(type) != 0) return false;
    tr->to_float(src, dst, n);
    return true;
}

// Asked about every cache write; only the last layer's V write is requested (the one split), and when it is
// delivered every layer's K/V rows of this batch are in the cache.
bool KvCapture::on_cache_write(ggml_tensor* t, bool ask) {
    const ggml_tensor* root = view_root(t);
    int layer = -1;
    bool is_v = false;
    if (parse_layer_name(root->name, "cache_k_l", &layer)) {
        is_v = false;
    } else if (parse_layer_name(root->name, "cache_v_l", &layer)) {
        is_v = true;
    } else {
        return false;
    }
    if (layer < 0 || layer >= n_layer_) return false;
    if (!ask) {
        deliver_from_cache(t);
        return true;
    }
    (is_v ? writes_[layer].v : writes_[layer].k) = t;
    if (!is_v || layer != n_layer_ - 1) return false;
    for (int l = 0; l < n_layer_; ++l)
        if (wanted(Tap::K, l) || wanted(Tap::V, l)) return true;
    return false;
}

void KvCapture::deliver_from_cache(const ggml_tensor* trigger) {
    // Cells of this batch's rows, from the V write's index tensor: one index per row, or with a transposed V
    // cache (no flash attention) one per element, row i's channel 0 at i * n_embd_v (= cell of row i).
    const ggml_tensor* idx = trigger->src[1];
    const ggml_tensor* v_root = view_root(trigger);
    const int64_t n_embd_v = v_root->ne[0], kv_size = v_root->ne[1];
    const bool v_trans = trigger->ne[0] == 1 && n_embd_v > 1;
    const int64_t n_idx = ggml_nelements(idx);
    const int64_t n_rows = v_trans ? n_idx / n_embd_v : n_idx;
    if (idx->type != GGML_TYPE_I64 && idx->type != GGML_TYPE_I32) return;
    if (cache_consumed_ + n_rows > batch_->n_tokens) {  // not the layout we know: deliver nothing
        ++nodes_lost_;
        return;
    }
    std::vector<char> raw(ggml_nbytes(idx));
    read_bytes(idx, 0, raw.size(), raw.data());
    cells_.resize(n_rows);
    for (int64_t i = 0; i < n_rows; ++i) {
        const int64_t k = v_trans ? i * n_embd_v : i;
        cells_[i] = idx->type == GGML_TYPE_I64 ? reinterpret_cast<const int64_t*>(raw.data())[k]
                                               : reinterpret_cast<const int32_t*>(raw.data())[k];
        if (cells_[i] < 0 || cells_[i] >= kv_size) {
            ++nodes_lost_;
            return;
        }
    }
    idx_.resize(n_rows);
    for (int64_t i = 0; i < n_rows; ++i) idx_[i] = cache_consumed_ + (int32_t)i;
    cache_consumed_ += (int32_t)n_rows;

    std::vector<char> row_bytes;
    for (int layer = 0; layer < n_layer_; ++layer) {
        for (Tap tap : {Tap::K, Tap::V}) {
            const ggml_tensor* w = tap == Tap::K ? writes_[layer].k : writes_[layer].v;
            if (w == nullptr || !wanted(tap, layer)) continue;
            const ggml_tensor* root = view_root(w);
            const int64_t width = root->ne[0];
            scratch_.resize((size_t)n_rows * width);
            bool ok = true;
            if (tap == Tap::V && v_trans) {
                // Element (cell c, channel j) at j * kv_size + c; transposed caches are unquantised.
                const size_t es = ggml_type_size(root->type);
                const bool host = root->buffer == nullptr || ggml_backend_buffer_is_host(root->buffer);
                if (ggml_blck_size(root->type) != 1) ok = false;
                if (ok && host &&
                    root->type == GGML_TYPE_F16) {  // the common case, without a call per element
                    const auto* base = static_cast<const ggml_fp16_t*>(root->data);
                    for (int64_t i = 0; i < n_rows; ++i)
                        for (int64_t j = 0; j < width; ++j)
                            scratch_[i * width + j] = ggml_fp16_to_fp32(base[j * kv_size + cells_[i]]);
                } else {
                    row_bytes.resize(es);
                    for (int64_t i = 0; ok && i < n_rows; ++i)
                        for (int64_t j = 0; ok && j < width; ++j) {
                            read_bytes(root, (size_t)(j * kv_size + cells_[i]) * es, es, row_bytes.data());
                            ok = to_floats(root->type, row_bytes.data(), &scratch_[i * width + j], 1);
                        }
                }
            } else {
                row_bytes.resize(root->nb[1]);
                for (int64_t i = 0; ok && i < n_rows; ++i) {
                    read_bytes(root, (size_t)cells_[i] * root->nb[1], root->nb[1], row_bytes.data());
                    ok = to_floats(root->type, row_bytes.data(), &scratch_[i * width], width);
                }
            }
            if (!ok) {
                ++nodes_lost_;
                continue;
            }
            TapRows rows{tap, layer, (int)n_rows, (int)width, scratch_.data(), idx_.data(), batch_};
            for (KvObserver* o : observers_)
                if (o->wants(tap, layer)) o->on_rows(rows);
            rows_delivered_ += n_rows;
        }
    }
}

}  // namespace kvlens
