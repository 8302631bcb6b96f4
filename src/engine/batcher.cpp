#include "engine/batcher.h"

#include <algorithm>
#include <utility>

#include "util/error.h"

namespace kvlens {

Batcher::Batcher(Session& session, bool free_finished, bool keep_cell_order)
    : session_(session), free_finished_(free_finished) {
    if (keep_cell_order) {
        if (!free_finished) throw Error("batch: keep_cell_order needs free_finished");
        if (session.n_seq_max() < 2) throw Error("batch: keep_cell_order needs a session of 2+ sequences");
        retired_ = session.n_seq_max() - 1;
    }
}

int Batcher::n_seq_ids() const {
    return session_.n_seq_max() - (retired_ >= 0 ? 1 : 0);
}

bool Batcher::can_join(size_t n_prompt, int max_tokens) const {
    if (retired_ < 0) return true;
    int64_t reserved = 0;
    for (const Seq& s : seqs_) reserved += s.max_tokens - (int64_t)s.gen.output.size();
    return used_ + reserved + (int64_t)n_prompt + max_tokens <= session_.n_ctx();
}

void Batcher::join(llama_seq_id seq, std::vector<llama_token> prompt, int max_tokens, SamplerPtr sampler,
                   std::function<bool(const Generation&)> on_token, std::vector<llama_token> forced) {
    if (prompt.empty()) throw Error("prompt: empty");
    if (max_tokens < 1) throw Error("max_tokens: " + std::to_string(max_tokens) + " must be >= 1");
    if (seq < 0 || seq >= n_seq_ids())
        throw Error("batch: sequence " + std::to_string(seq) + " is not one of the batch's " +
                    std::to_string(n_seq_ids()) + " sequence slots");
    for (const Seq& s : seqs_)
        if (s.gen.seq == seq) throw Error("batch: sequence " + std::to_string(seq) + " is already decoding");
    if (used_ + (int64_t)prompt.size() + 1 > session_.n_ctx())
        throw Error("prompt: " + std::to_string(prompt.size()) + " tokens do not fit the " +
                    std::to_string(session_.n_ctx() - used_) + " cells the context has left");
    used_ += (int64_t)prompt.size();
    Seq s;
    s.gen.seq = seq;
    s.gen.prompt = std::move(prompt);
    s.max_tokens = max_tokens;
    s.sampler = std::move(sampler);
    s.on_token = std::move(on_token);
    if (!forced.empty()) s.max_tokens = std::min(max_tokens, (int)forced.size());
    s.forced = std::move(forced);
    seqs_.push_back(std::move(s));
}

void Batcher::finish(Seq& s, std::vector<Generation>& done) {
    Generation& g = s.gen;
    std::vector<llama_token> visible = g.output;
    if (g.stop == StopReason::EndOfTurn) visible.pop_back();
    g.text = session_.model().detokenize(visible);
    if (retired_ >= 0) {
        session_.seq_cp(g.seq, retired_);  // the cells stay taken (see keep_cell_order), the id is free
        session_.seq_rm(g.seq);
    } else if (free_finished_) {
        session_.seq_rm(g.seq);
        // The prompt and every sampled token but the last (never fed back) hold a cell.
        used_ -= (int64_t)g.prompt.size() + (int64_t)g.output.size() - (g.output.empty() ? 0 : 1);
    }
    done.push_back(std::move(g));
}

void Batcher::release_retired() {
    if (retired_ < 0 || !seqs_.empty()) return;
    session_.seq_rm(retired_);  // the batch is empty: every cell is free, the next join starts at cell 0
    used_ = 0;
}

std::vector<Generation> Batcher::step() {
    const Model& model = session_.model();
    const int n_vocab = model.info().n_vocab;
    std::vector<Generation> done;
    batch_.clear();
    std::vector<Seq> kept;
    kept.reserve(seqs_.size());
    for (Seq& s : seqs_) {
        if (s.row < 0) {  // joined since the last step: prefilled below
            kept.push_back(std::move(s));
            continue;
        }
        Generation& g = s.gen;
        const float* logits = session_.logits(s.row);
        const llama_token tok = s.forced.empty() ? sample_token(s.sampler.get(), logits, n_vocab, buf_)
                                                 : s.forced[g.output.size()];
        g.output.push_back(tok);
        g.steps.push_back(step_stats(logits, n_vocab, tok));

        const bool keep = !s.on_token || s.on_token(g);
        bool stop = true;
        if (model.is_eog(tok)) {
            g.stop = StopReason::EndOfTurn;
        } else if ((int)g.output.size() >= s.max_tokens) {
            g.stop = StopReason::MaxTokens;
        } else if (!keep) {
            g.stop = StopReason::Callback;
        } else if (used_ + 1 > session_.n_ctx()) {
            g.stop = StopReason::ContextFull;
        } else {
            stop = false;
        }
        if (stop) {
            finish(s, done);
            continue;
        }
        s.row = (int)batch_.size();
        batch_.push_back({tok, (llama_pos)(g.prompt.size() + g.output.size() - 1), g.seq, true});
        ++used_;
        kept.push_back(std::move(s));
    }
    seqs_ = std::move(kept);
    release_retired();
    // New sequences after the running ones: their prompts, logits at the last position only.
    for (Seq& s : seqs_) {
        if (s.row >= 0) continue;
        const std::vector<llama_token>& p = s.gen.prompt;
        for (size_t t = 0; t < p.size(); ++t)
            batch_.push_back({p[t], (llama_pos)t, s.gen.seq, t + 1 == p.size()});
        s.row = (int)batch_.size() - 1;
    }
    if (!batch_.empty()) {
        try {
            session_.decode(batch_);
        } catch (...) {
            if (free_finished_) {
                for (const Seq& s : seqs_) session_.seq_rm(s.gen.seq);
                used_ = 0;
            }
            seqs_.clear();
            release_retired();
            throw;
        }
    }
    return done;
}

}  // namespace kvlens
