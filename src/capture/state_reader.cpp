#include "capture/state_reader.h"

#include <ggml.h>

#include <cstring>
#include <string>

#include "util/error.h"

namespace kvlens {

namespace {

// Sequential reader over the serialised bytes; every read is bounds-checked.
struct Reader {
    const uint8_t* p;
    size_t n, off = 0;
    template <typename T>
    T get() {
        T v;
        need(sizeof(T));
        memcpy(&v, p + off, sizeof(T));
        off += sizeof(T);
        return v;
    }
    const uint8_t* take(size_t bytes) {
        need(bytes);
        const uint8_t* r = p + off;
        off += bytes;
        return r;
    }
    void need(size_t bytes) const {
        if (off + bytes > n) throw Error("state: sequence state ends early (unknown llama.cpp state layout)");
    }
};

void to_f32(int32_t type, const uint8_t* src, float* dst, int64_t n) {
    const ggml_type_traits* tr = ggml_get_type_traits((ggml_type)type);
    if (type == GGML_TYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (tr != nullptr && tr->to_float != nullptr) {
        tr->to_float(src, dst, n);
    } else {
        throw Error("state: cache type " + std::to_string(type) + " cannot be converted to F32");
    }
}

}  // namespace

static const float* find_row(const CacheSnapshot& s, const std::vector<std::vector<float>>& m, int layer,
                             llama_pos p, int width) {
    for (int c = 0; c < s.n_cells(); ++c) {
        if (s.pos[c] == p) return m[layer].data() + (size_t)c * width;
    }
    return nullptr;
}

const float* CacheSnapshot::k_row(int layer, llama_pos p) const {
    return find_row(*this, k, layer, p, k_width);
}
const float* CacheSnapshot::v_row(int layer, llama_pos p) const {
    return find_row(*this, v, layer, p, v_width);
}

CacheSnapshot read_seq_state(llama_context* ctx, llama_seq_id seq) {
    std::vector<uint8_t> buf(llama_state_seq_get_size(ctx, seq));
    const size_t got = llama_state_seq_get_data(ctx, buf.data(), buf.size(), seq);
    if (got == 0)
        throw Error("state: llama_state_seq_get_data returned nothing for sequence " + std::to_string(seq));
    Reader r{buf.data(), got};

    CacheSnapshot s;
    r.get<uint32_t>();  // magic
    if (r.get<int32_t>() != seq) throw Error("state: sequence id mismatch");
    const uint32_t n_stream = r.get<uint32_t>();
    for (uint32_t st = 0; st < n_stream; ++st) {
        const uint32_t cells = r.get<uint32_t>();
        if (cells == 0) continue;
        if (!s.pos.empty()) throw Error("state: sequence spans several cache streams (use a unified cache)");
        for (uint32_t c = 0; c < cells; ++c) {
            s.pos.push_back(r.get<int32_t>());
            const uint32_t n_seq = r.get<uint32_t>();
            r.take(n_seq * sizeof(int32_t));
        }
        s.v_trans = r.get<uint32_t>() != 0;
        const uint32_t n_layer = r.get<uint32_t>();
        s.k.resize(n_layer);
        s.v.resize(n_layer);
        for (uint32_t l = 0; l < n_layer; ++l) {
            const int32_t type = r.get<int32_t>();
            const uint64_t row = r.get<uint64_t>();
            const int64_t width =
                (int64_t)(row / ggml_type_size((ggml_type)type) * ggml_blck_size((ggml_type)type));
            s.k_width = (int)width;
            s.k[l].resize(cells * width);
            const uint8_t* src = r.take(cells * row);
            for (uint32_t c = 0; c < cells; ++c)
                to_f32(type, src + c * row, s.k[l].data() + c * width, width);
        }
        for (uint32_t l = 0; l < n_layer; ++l) {
            const int32_t type = r.get<int32_t>();
            if (!s.v_trans) {
                const uint64_t row = r.get<uint64_t>();
                const int64_t width =
                    (int64_t)(row / ggml_type_size((ggml_type)type) * ggml_blck_size((ggml_type)type));
                s.v_width = (int)width;
                s.v[l].resize(cells * width);
                const uint8_t* src = r.take(cells * row);
                for (uint32_t c = 0; c < cells; ++c)
                    to_f32(type, src + c * row, s.v[l].data() + c * width, width);
            } else {
                // Transposed: for each feature j, the values of all cells.
                const uint32_t el = r.get<uint32_t>();
                const uint32_t width = r.get<uint32_t>();
                s.v_width = (int)width;
                s.v[l].resize((size_t)cells * width);
                std::vector<float> col(cells);
                for (uint32_t j = 0; j < width; ++j) {
                    to_f32(type, r.take((size_t)cells * el), col.data(), cells);
                    for (uint32_t c = 0; c < cells; ++c) s.v[l][(size_t)c * width + j] = col[c];
                }
            }
        }
    }
    return s;
}

}  // namespace kvlens
