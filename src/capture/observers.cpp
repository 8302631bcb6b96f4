#include "capture/observers.h"

#include <algorithm>

namespace kvlens {

bool RowRecorder::wants(Tap tap, int) const {
    return std::find(taps_.begin(), taps_.end(), tap) != taps_.end();
}

void RowRecorder::on_rows(const TapRows& rows) {
    for (int i = 0; i < rows.n_rows; ++i) {
        const int j = rows.batch_idx[i];
        for (int s = 0; s < rows.batch->n_seq_id[j]; ++s) {
            const llama_seq_id seq = rows.batch->seq_id[j][s];
            if (seq_ >= 0 && seq != seq_) continue;
            rows_[{rows.tap, rows.layer, seq, rows.pos(i)}].assign(rows.row(i), rows.row(i) + rows.width);
        }
    }
}

const std::vector<float>* RowRecorder::get(Tap tap, int layer, llama_seq_id seq, llama_pos pos) const {
    auto it = rows_.find({tap, layer, seq, pos});
    return it == rows_.end() ? nullptr : &it->second;
}

bool PoolObserver::wants(Tap tap, int layer) const {
    if (tap == Tap::K) return pool_.uses_k() && pool_.uses_layer(layer);
    if (tap == Tap::V) return pool_.uses_v() && pool_.uses_layer(layer);
    return false;
}

void PoolObserver::on_rows(const TapRows& rows) {
    for (int i = 0; i < rows.n_rows; ++i) {
        const llama_pos p = rows.pos(i);
        if (p < pos_begin_ || p >= pos_end_ || !rows.has_seq(i, seq_)) continue;
        if (rows.tap == Tap::K) {
            pool_.add_k(rows.layer, rows.row(i));
        } else {
            pool_.add_v(rows.layer, rows.row(i));
        }
    }
}

}  // namespace kvlens
