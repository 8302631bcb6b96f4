// Continuous batching: the sequences of one Session decoded together, one token each per step, which join
// (their prompt is prefilled in the next step) and leave between steps. generate() runs on it (all
// sequences join at once), and so does the server's shared context (requests join as they arrive).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/generate.h"

namespace kvlens {

class Batcher {
public:
    // free_finished: a finished sequence's cells are removed from the cache (llama_memory_seq_rm) when it
    // leaves, so that its id and cells can be reused; otherwise they stay (generate(): callers read them).
    // keep_cell_order (with free_finished; for a batch_invariant session): every sequence's cells stay in
    // the order of its positions, as when it is decoded alone. llama.cpp puts new tokens in the lowest free
    // cells and flash attention sums a row's cells in cell order, so a cell freed below a running sequence
    // would change its sums. A finished sequence's cells are therefore kept (handed to the session's last
    // sequence id, which no request uses) until the batch is empty; joins wait (can_join) until the cells
    // above the others' reservations hold their prompt and max_tokens.
    Batcher(Session& session, bool free_finished, bool keep_cell_order = false);

    // Adds sequence `seq` (empty in the cache and not in the batch) to be prefilled at the next step(), then
    // sampled with `sampler`, up to max_tokens. on_token (optional) is called after each sampled token;
    // false stops the sequence (StopReason::Callback). forced (teacher forcing, to score a given answer):
    // these tokens are taken in turn instead of sampled ones, with the same step statistics and capture, up
    // to max_tokens = forced.size() at most. Throws Error when the prompt does not fit the cells the batch
    // leaves free.
    void join(llama_seq_id seq, std::vector<llama_token> prompt, int max_tokens, SamplerPtr sampler,
              std::function<bool(const Generation&)> on_token = {}, std::vector<llama_token> forced = {});

    // One step: samples a token for every sequence whose logits are ready (the callbacks run here), stops
    // the ones that are done, then decodes in one call the next token of the others and the prompts of those
    // that joined. Returns the sequences that finished (text filled), in join order. Throws Error when
    // decoding fails; the batch is then empty (every sequence dropped, their cells removed if free_finished).
    std::vector<Generation> step();

    // Whether join() would take this request now. Always, except with keep_cell_order: then the cells
    // above those in use must also hold every running sequence's remaining max_tokens (a context-full stop
    // would make its answer depend on the others) and this one's prompt and max_tokens.
    bool can_join(size_t n_prompt, int max_tokens) const;
    // The sequence ids join() takes: 0 .. n_seq_max - 1, or - 2 with keep_cell_order.
    int n_seq_ids() const;

    bool empty() const { return seqs_.empty(); }
    int size() const { return (int)seqs_.size(); }
    // KV cells held by the batch's sequences (and by finished ones when not free_finished).
    int64_t cells_used() const { return used_; }

private:
    struct Seq {
        Generation gen;
        int max_tokens = 0;
        SamplerPtr sampler;
        std::function<bool(const Generation&)> on_token;
        std::vector<llama_token> forced;
        int row =
            -1;  // index in the last decode whose logits the next token is sampled from; -1: prefill due
    };
    void finish(Seq& s, std::vector<Generation>& done);
    void release_retired();  // keep_cell_order: frees the finished sequences' cells once the batch is empty

    Session& session_;
    bool free_finished_;
    llama_seq_id retired_ = -1;  // keep_cell_order: holds the cells of finished sequences; -1: off
    std::vector<Seq> seqs_;
    int64_t used_ = 0;
    std::vector<BatchToken> batch_;
    std::vector<llama_token_data> buf_;
};

}  // namespace kvlens
