#include "capture/pooling.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "util/error.h"

namespace kvlens {

// ---- knob names -------------------------------------------------------------------------------------------

namespace {

// Finds `s` in `names` (indexed by the enum value) or throws naming the knob and the accepted values.
template <typename E, size_t N>
E parse_name(const char* knob, const std::string& s, const char* const (&names)[N]) {
    for (size_t i = 0; i < N; ++i) {
        if (s == names[i]) return static_cast<E>(i);
    }
    std::string expected;
    for (size_t i = 0; i < N; ++i) expected += (i ? ", " : "") + std::string(names[i]);
    throw Error(std::string(knob) + ": unknown value '" + s + "' (expected " + expected + ")");
}

const char* const kKvPartNames[] = {"k", "v", "kv_cat"};
const char* const kPosAggNames[] = {"mean", "sum", "last", "first"};
const char* const kHeadAggNames[] = {"flatten", "mean"};
const char* const kLayerAggNames[] = {"flatten", "mean", "sum", "last", "none"};

std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

}  // namespace

KvPart parse_kv_part(const std::string& s) {
    return parse_name<KvPart>("kv_part", s, kKvPartNames);
}
PosAgg parse_pos_agg(const std::string& s) {
    return parse_name<PosAgg>("pos_agg", s, kPosAggNames);
}
HeadAgg parse_head_agg(const std::string& s) {
    return parse_name<HeadAgg>("head_agg", s, kHeadAggNames);
}
LayerAgg parse_layer_agg(const std::string& s) {
    return parse_name<LayerAgg>("layer_agg", s, kLayerAggNames);
}

const char* to_string(KvPart v) {
    return kKvPartNames[static_cast<int>(v)];
}
const char* to_string(PosAgg v) {
    return kPosAggNames[static_cast<int>(v)];
}
const char* to_string(HeadAgg v) {
    return kHeadAggNames[static_cast<int>(v)];
}
const char* to_string(LayerAgg v) {
    return kLayerAggNames[static_cast<int>(v)];
}

std::vector<int> parse_layers(const std::string& s) {
    const std::string text = trim(s);
    if (text == "all") return {};
    auto fail = [&](const std::string& why) -> Error {
        return Error("layers: bad value '" + s + "' (" + why +
                     "; expected 'all', a list like 0,3,-1 or ranges like -4..-1)");
    };
    // Indices are bounded so that a typo cannot expand a range into millions of entries.
    auto index = [&](const std::string& item) {
        const std::string t = trim(item);
        if (t.empty()) throw fail("empty item");
        const size_t digits = t.size() - (t.rfind('-', 0) == 0 ? 1 : 0);
        if (digits == 0 || digits > 4 ||
            t.find_first_not_of("0123456789", t.size() - digits) != std::string::npos)
            throw fail("'" + t + "' is not a layer index");
        return std::stoi(t);
    };

    std::vector<int> out;
    size_t begin = 0;
    while (true) {
        const size_t end = std::min(text.find(',', begin), text.size());
        const std::string item = text.substr(begin, end - begin);
        const size_t dots = item.find("..");
        if (dots == std::string::npos) {
            out.push_back(index(item));
        } else {
            const int a = index(item.substr(0, dots)), b = index(item.substr(dots + 2));
            // A mixed-sign range ("0..-1") depends on the model's depth, which is unknown here.
            if ((a < 0) != (b < 0))
                throw fail("range '" + trim(item) + "' mixes counting from the start and end");
            if (a > b) throw fail("range '" + trim(item) + "' is empty");
            for (int l = a; l <= b; ++l) out.push_back(l);
        }
        if (end == text.size()) break;
        begin = end + 1;
    }
    for (size_t i = 0; i < out.size(); ++i) {
        if (std::find(out.begin(), out.begin() + i, out[i]) != out.begin() + i)
            throw fail("layer " + std::to_string(out[i]) + " is listed twice");
    }
    return out;
}

// ---- KvPool -----------------------------------------------------------------------------------------------

std::vector<int> resolve_layers(const std::vector<int>& given_in, int n_layer) {
    std::vector<int> given = given_in;  // as written, for messages
    if (given.empty()) {
        for (int l = 0; l < n_layer; ++l) given.push_back(l);
    }
    std::vector<int> out, first_as(n_layer, 0);
    std::vector<bool> seen(n_layer, false);
    for (int l : given) {
        const int r = l < 0 ? n_layer + l : l;
        if (r < 0 || r >= n_layer)
            throw Error("layers: layer " + std::to_string(l) + " out of range for a " +
                        std::to_string(n_layer) + "-layer model");
        if (seen[r])
            throw Error("layers: layer " + std::to_string(r) + " selected twice (as " +
                        std::to_string(first_as[r]) + " and " + std::to_string(l) + ")");
        seen[r] = true;
        first_as[r] = l;
        out.push_back(r);
    }
    return out;
}

KvPool::KvPool(const PoolSpec& spec, int n_layer, int n_head_kv, int head_dim)
    : spec_(spec), n_layer_(n_layer), n_head_kv_(n_head_kv), head_dim_(head_dim) {
    if (n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0)
        throw Error("pooling: bad model shape (n_layer " + std::to_string(n_layer) + ", n_head_kv " +
                    std::to_string(n_head_kv) + ", head_dim " + std::to_string(head_dim) + ")");
    if (spec.window < 0) throw Error("window: bad value " + std::to_string(spec.window) + " (expected >= 0)");

    layers_ = resolve_layers(spec.layers, n_layer);
    slot_of_.assign(n_layer, -1);
    for (size_t s = 0; s < layers_.size(); ++s) slot_of_[layers_[s]] = (int)s;

    // Allocate only what pos_agg needs, and only for the parts used. "last" never needs the ring: the
    // newest row in the window is the newest row.
    const size_t w = (size_t)n_head_kv * head_dim;
    st_.resize(layers_.size() * 2);
    for (size_t s = 0; s < layers_.size(); ++s) {
        for (int part = 0; part < 2; ++part) {
            if (!(part == 0 ? uses_k() : uses_v())) continue;
            PartState& st = st_[s * 2 + part];
            if (spec.pos_agg == PosAgg::Last) {
                st.last.assign(w, 0.0f);
            } else if (spec.window > 0) {
                st.ring.assign((size_t)spec.window * w, 0.0f);
            } else if (spec.pos_agg == PosAgg::First) {
                st.first.assign(w, 0.0f);
            } else {
                st.sum.assign(w, 0.0);
            }
        }
    }
}

bool KvPool::uses_layer(int layer) const {
    return layer >= 0 && layer < n_layer_ && slot_of_[layer] >= 0;
}

void KvPool::add_k(int layer, const float* row) {
    add(0, layer, row);
}
void KvPool::add_v(int layer, const float* row) {
    add(1, layer, row);
}

void KvPool::add(int part, int layer, const float* row) {
    if (layer < 0 || layer >= n_layer_)
        throw Error("pooling: layer " + std::to_string(layer) + " out of range for a " +
                    std::to_string(n_layer_) + "-layer model");
    const int slot = slot_of_[layer];
    // Rows the spec does not use are dropped, so callers may feed everything they have.
    if (slot < 0 || !(part == 0 ? uses_k() : uses_v())) return;

    PartState& st = st_[(size_t)slot * 2 + part];
    const size_t w = (size_t)n_head_kv_ * head_dim_;
    if (!st.last.empty()) {
        std::copy(row, row + w, st.last.begin());
    } else if (!st.ring.empty()) {
        std::copy(row, row + w, st.ring.begin() + (st.n % spec_.window) * w);
    } else if (!st.first.empty()) {
        if (st.n == 0) std::copy(row, row + w, st.first.begin());
    } else {
        for (size_t i = 0; i < w; ++i) st.sum[i] += row[i];
    }
    ++st.n;
}

int64_t KvPool::count() const {
    const int64_t n = st_[uses_k() ? 0 : 1].n;
    return spec_.window > 0 ? std::min<int64_t>(n, spec_.window) : n;
}

void KvPool::pooled_part(const PartState& st, float* out) const {
    const size_t w = (size_t)n_head_kv_ * head_dim_;
    const int64_t held = spec_.window > 0 ? std::min<int64_t>(st.n, spec_.window) : st.n;
    if (held == 0) {
        std::fill(out, out + w, 0.0f);
    } else if (!st.last.empty()) {
        std::copy(st.last.begin(), st.last.end(), out);
    } else if (!st.first.empty()) {
        std::copy(st.first.begin(), st.first.end(), out);
    } else if (!st.ring.empty() && spec_.pos_agg == PosAgg::First) {
        // Once the ring is full the oldest row is the one the next add overwrites.
        const size_t oldest = st.n >= spec_.window ? st.n % spec_.window : 0;
        std::copy(st.ring.begin() + oldest * w, st.ring.begin() + (oldest + 1) * w, out);
    } else {
        const double scale = spec_.pos_agg == PosAgg::Mean ? 1.0 / (double)held : 1.0;
        for (size_t i = 0; i < w; ++i) {
            double acc = 0.0;
            if (st.ring.empty()) {
                acc = st.sum[i];
            } else {
                for (int64_t r = 0; r < held; ++r) acc += st.ring[r * w + i];
            }
            out[i] = (float)(acc * scale);
        }
    }
}

int KvPool::result_width() const {
    const int part = spec_.head_agg == HeadAgg::Flatten ? n_head_kv_ * head_dim_ : head_dim_;
    const int slot = spec_.kv_part == KvPart::KV ? 2 * part : part;
    return spec_.layer_agg == LayerAgg::Flatten ? (int)layers_.size() * slot : slot;
}

int KvPool::result_rows() const {
    return spec_.layer_agg == LayerAgg::None ? (int)layers_.size() : 1;
}

Pooled KvPool::result() const {
    const int H = n_head_kv_, D = head_dim_;
    const int n_sel = (int)layers_.size();
    const int part_w = spec_.head_agg == HeadAgg::Flatten ? H * D : D;
    const int slot_w = spec_.kv_part == KvPart::KV ? 2 * part_w : part_w;

    // Per selected layer: pos-pooled, head-aggregated [K ; V] (or K, or V), in spec order.
    std::vector<double> slots((size_t)n_sel * slot_w);
    std::vector<float> pooled((size_t)H * D);
    for (int s = 0; s < n_sel; ++s) {
        double* dst = slots.data() + (size_t)s * slot_w;
        for (int part = 0; part < 2; ++part) {
            if (!(part == 0 ? uses_k() : uses_v())) continue;
            pooled_part(st_[(size_t)s * 2 + part], pooled.data());
            if (spec_.head_agg == HeadAgg::Flatten) {
                for (int i = 0; i < H * D; ++i) dst[i] = pooled[i];
            } else {
                for (int d = 0; d < D; ++d) {
                    double acc = 0.0;
                    for (int h = 0; h < H; ++h) acc += pooled[(size_t)h * D + d];
                    dst[d] = acc / H;
                }
            }
            dst += part_w;
        }
    }

    // Across layers. flatten and none share the per-layer layout: one long row vs. one row per layer.
    std::vector<double> rows;
    switch (spec_.layer_agg) {
        case LayerAgg::Flatten:
        case LayerAgg::None:
            rows = std::move(slots);
            break;
        case LayerAgg::Last:
            rows.assign(slots.end() - slot_w, slots.end());
            break;
        case LayerAgg::Mean:
        case LayerAgg::Sum:
            rows.assign(slot_w, 0.0);
            for (int s = 0; s < n_sel; ++s) {
                for (int i = 0; i < slot_w; ++i) rows[i] += slots[(size_t)s * slot_w + i];
            }
            if (spec_.layer_agg == LayerAgg::Mean) {
                for (double& x : rows) x /= n_sel;
            }
            break;
    }

    Pooled out;
    out.n_vectors = result_rows();
    out.width = result_width();
    out.data.resize(rows.size());
    for (int r = 0; r < out.n_vectors; ++r) {
        const double* x = rows.data() + (size_t)r * out.width;
        double scale = 1.0;
        if (spec_.normalize) {
            double sq = 0.0;
            for (int i = 0; i < out.width; ++i) sq += x[i] * x[i];
            if (sq > 0.0) scale = 1.0 / std::sqrt(sq);  // a zero row stays zero
        }
        for (int i = 0; i < out.width; ++i) out.data[(size_t)r * out.width + i] = (float)(x[i] * scale);
    }
    return out;
}

size_t KvPool::state_bytes() const {
    size_t bytes = 0;
    for (const PartState& st : st_) {
        bytes += st.sum.size() * sizeof(double) +
                 (st.first.size() + st.last.size() + st.ring.size()) * sizeof(float);
    }
    return bytes;
}

void KvPool::reset() {
    for (PartState& st : st_) {
        std::fill(st.sum.begin(), st.sum.end(), 0.0);
        std::fill(st.first.begin(), st.first.end(), 0.0f);
        std::fill(st.last.begin(), st.last.end(), 0.0f);
        std::fill(st.ring.begin(), st.ring.end(), 0.0f);
        st.n = 0;
    }
}

}  // namespace kvlens
