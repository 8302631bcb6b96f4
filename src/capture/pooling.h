// Pooling algebra (method.md section 1) in streaming form.
//
// A KvPool receives K and V rows of one sequence as the model computes them, one row per (layer, position),
// and keeps only what its PoolSpec needs: running sums, the first and the last row per layer, or a ring
// buffer of the last `window` rows. Memory is O(layers x width) per sequence, except windows
// (O(window x layers x width)). The pooled result can be read at any time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvlens {

enum class KvPart : uint8_t { K, V, KV };                          // "k", "v", "kv_cat"
enum class PosAgg : uint8_t { Mean, Sum, Last, First };            // "mean", "sum", "last", "first"
enum class HeadAgg : uint8_t { Flatten, Mean };                    // "flatten", "mean"
enum class LayerAgg : uint8_t { Flatten, Mean, Sum, Last, None };  // "flatten", "mean", "sum", "last", "none"

struct PoolSpec {
    KvPart kv_part = KvPart::KV;
    PosAgg pos_agg = PosAgg::Mean;
    HeadAgg head_agg = HeadAgg::Flatten;
    LayerAgg layer_agg = LayerAgg::None;
    bool normalize = false;
    // Layers to use, in this order. Negative indices count from the end (-1 = last layer). Empty = all.
    std::vector<int> layers;
    // 0: every position given to the pool. W > 0: only the last W positions (ring buffer).
    int window = 0;
};

// Parsing of the knob names above; throw kvlens::Error naming the flag and the value on a bad value.
KvPart parse_kv_part(const std::string& s);
PosAgg parse_pos_agg(const std::string& s);
HeadAgg parse_head_agg(const std::string& s);
LayerAgg parse_layer_agg(const std::string& s);
// "all", "-4..-1" style ranges, or comma lists "0,3,-1".
std::vector<int> parse_layers(const std::string& s);
// Layer indices as parse_layers gives them -> non-negative indices of an n_layer model, in order (empty =
// all); an index out of range or a layer selected twice -> Error.
std::vector<int> resolve_layers(const std::vector<int>& given, int n_layer);
const char* to_string(KvPart);
const char* to_string(PosAgg);
const char* to_string(HeadAgg);
const char* to_string(LayerAgg);

// A pooled result: n_vectors rows of `width` floats, row-major. One row unless layer_agg == None
// (then one row per selected layer: the trajectory used by CoE).
struct Pooled {
    int n_vectors = 0;
    int width = 0;
    std::vector<float> data;
    const float* row(int i) const { return data.data() + (size_t)i * width; }
};

class KvPool {
public:
    // n_layer: layers of the model; n_head_kv x head_dim: the K (and V) row width of every layer.
    KvPool(const PoolSpec& spec, int n_layer, int n_head_kv, int head_dim);

    // Is this layer one the spec selects? (Observers use it to request only needed nodes.)
    bool uses_layer(int layer) const;
    bool uses_k() const { return spec_.kv_part != KvPart::V; }
    bool uses_v() const { return spec_.kv_part != KvPart::K; }

    // One position's K (or V) row of one layer, n_head_kv*head_dim floats, head-major (head h at h*head_dim).
    // K and V of the same position may arrive in any order; positions arrive in order per layer.
    void add_k(int layer, const float* row);
    void add_v(int layer, const float* row);

    // Number of positions pooled so far (counted on the first selected layer and part; within the window).
    int64_t count() const;

    // The pooled vectors now. With no position yet, rows are zeros.
    Pooled result() const;
    // Width of one result row, and number of rows.
    int result_width() const;
    int result_rows() const;

    // Bytes of accumulator state held (for the O(layers x width) claim).
    size_t state_bytes() const;

    // Resolved layer list (non-negative, in spec order).
    const std::vector<int>& layers() const { return layers_; }
    const PoolSpec& spec() const { return spec_; }

    void reset();

private:
    struct PartState {
        std::vector<double> sum;   // running sum (pos_agg mean/sum, window == 0)
        std::vector<float> first;  // first row (pos_agg first)
        std::vector<float> last;   // last row (pos_agg last)
        std::vector<float> ring;   // window x row (window > 0)
        int64_t n = 0;             // rows added
    };
    void add(int part, int layer, const float* row);
    // Pool one part of one slot over positions: n_head_kv*head_dim floats.
    void pooled_part(const PartState& st, float* out) const;

    PoolSpec spec_;
    int n_layer_, n_head_kv_, head_dim_;
    std::vector<int> layers_;    // resolved selected layers
    std::vector<int> slot_of_;   // layer -> slot in layers_, -1 if unused
    std::vector<PartState> st_;  // [slot * 2 + part], part 0 = K, 1 = V
};

}  // namespace kvlens
