// Ready-made KV observers: a recorder of raw rows (dumps, tests) and a streaming pool for one sequence.
#pragma once

#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include "capture/kv_capture.h"
#include "capture/pooling.h"

namespace kvlens {

// Keeps every row of the selected taps: memory grows with the sequence. For dumps and tests only.
class RowRecorder : public KvObserver {
public:
    // taps: which to record; seq: only this sequence (-1: all sequences).
    RowRecorder(std::vector<Tap> taps, llama_seq_id seq = -1) : taps_(std::move(taps)), seq_(seq) {}
    bool wants(Tap tap, int layer) const override;
    void on_rows(const TapRows& rows) override;

    // Row of (tap, layer, seq, pos), or nullptr if never seen.
    const std::vector<float>* get(Tap tap, int layer, llama_seq_id seq, llama_pos pos) const;
    size_t size() const { return rows_.size(); }
    void clear() { rows_.clear(); }

private:
    std::vector<Tap> taps_;
    llama_seq_id seq_;
    std::map<std::tuple<Tap, int, llama_seq_id, llama_pos>, std::vector<float>> rows_;
};

// Feeds the K/V rows of one sequence, positions in [pos_begin, pos_end), into a KvPool.
class PoolObserver : public KvObserver {
public:
    PoolObserver(KvPool& pool, llama_seq_id seq, llama_pos pos_begin = 0, llama_pos pos_end = INT32_MAX)
        : pool_(pool), seq_(seq), pos_begin_(pos_begin), pos_end_(pos_end) {}
    bool wants(Tap tap, int layer) const override;
    void on_rows(const TapRows& rows) override;
    void set_range(llama_pos pos_begin, llama_pos pos_end) {
        pos_begin_ = pos_begin;
        pos_end_ = pos_end;
    }

private:
    KvPool& pool_;
    llama_seq_id seq_;
    llama_pos pos_begin_, pos_end_;
};

}  // namespace kvlens
