#include "methods/embed.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "capture/observers.h"
#include "util/error.h"
#include "util/utf8.h"

namespace kvlens {

PoolSpec embed_preset() {
    PoolSpec s;
    s.kv_part = KvPart::KV;
    s.pos_agg = PosAgg::Mean;
    s.head_agg = HeadAgg::Mean;
    s.layer_agg = LayerAgg::Mean;
    s.layers = {-4, -3, -2, -1};
    s.normalize = true;
    return s;
}

std::string text_problem(const std::string& text) {
    if (text.find_first_not_of(" \t\r\n\f\v") == std::string::npos) return "empty text";
    for (size_t i = 0; i < text.size();) {
        if (text[i] == '\0') return "NUL byte at byte " + std::to_string(i);
        const size_t len = utf8_seq_len(text, i);
        if (len == 0) return "invalid UTF-8 at byte " + std::to_string(i);
        i += len;
    }
    return "";
}

namespace {

// Sums the residual stream of one sequence over positions [begin, end), per selected layer.
class HiddenMeanObserver : public KvObserver {
public:
    HiddenMeanObserver(const std::vector<int>& layers, int n_layer, int n_embd, llama_seq_id seq,
                       llama_pos begin, llama_pos end)
        : slot_(n_layer, -1), n_embd_(n_embd), seq_(seq), begin_(begin), end_(end) {
        for (size_t i = 0; i < layers.size(); ++i) slot_[layers[i]] = (int)i;
        sum_.assign(layers.size() * n_embd, 0.0);
        count_.assign(layers.size(), 0);
    }
    bool wants(Tap tap, int layer) const override {
        return tap == Tap::Hidden && layer >= 0 && slot_[layer] >= 0;
    }
    void on_rows(const TapRows& rows) override {
        if (rows.tap != Tap::Hidden || rows.layer < 0 || slot_[rows.layer] < 0) return;
        const int s = slot_[rows.layer];
        for (int i = 0; i < rows.n_rows; ++i) {
            const llama_pos p = rows.pos(i);
            if (p < begin_ || p >= end_ || !rows.has_seq(i, seq_)) continue;
            const float* r = rows.row(i);
            double* acc = sum_.data() + (size_t)s * n_embd_;
            for (int d = 0; d < n_embd_; ++d) acc[d] += r[d];
            ++count_[s];
        }
    }
    // Mean over positions, then over layers, L2-normalised. Throws if a layer saw a different row count.
    std::vector<float> result() const {
        const int64_t want = end_ - begin_;
        std::vector<double> v(n_embd_, 0.0);
        for (size_t s = 0; s < count_.size(); ++s) {
            if (count_[s] != want)
                throw Error("embed: hidden state of sequence " + std::to_string(seq_) + " got " +
                            std::to_string(count_[s]) + " rows, expected " + std::to_string(want));
            for (int d = 0; d < n_embd_; ++d) v[d] += sum_[s * n_embd_ + d] / (double)want;
        }
        double norm = 0.0;
        for (double x : v) norm += x * x;
        norm = std::sqrt(norm);
        std::vector<float> out(n_embd_);
        for (int d = 0; d < n_embd_; ++d) out[d] = (float)(norm > 0.0 ? v[d] / norm : 0.0);
        return out;
    }

private:
    std::vector<int> slot_;
    int n_embd_;
    llama_seq_id seq_;
    llama_pos begin_, end_;
    std::vector<double> sum_;
    std::vector<int64_t> count_;
};

}  // namespace

Embedder::Embedder(Session& session, const EmbedParams& params) : session_(session), params_(params) {
    const ModelInfo& mi = session.model().info();
    if (!params.kv && !params.hidden) throw Error("embed: nothing to compute (neither KV nor hidden)");
    if (params.batch_seqs < 1 || params.batch_seqs > session.n_seq_max())
        throw Error("embed: batch of " + std::to_string(params.batch_seqs) +
                    " sequences, the session holds " + std::to_string(session.n_seq_max()));
    const KvPool probe(params.spec, mi.n_layer, mi.n_head_kv, mi.head_dim);  // validates the spec
    kv_width_ = params.kv ? probe.result_width() * probe.result_rows() : 0;
    layers_ = probe.layers();
}

int Embedder::hidden_width() const {
    return params_.hidden ? session_.model().info().n_embd : 0;
}

std::vector<Embedding> Embedder::embed(const std::vector<std::string>& texts) {
    const Model& model = session_.model();
    const llama_token bos = llama_vocab_bos(model.vocab());
    const bool add_bos = llama_vocab_get_add_bos(model.vocab()) && bos != LLAMA_TOKEN_NULL;
    const int n_ctx = session_.n_ctx();
    std::vector<Embedding> out(texts.size());
    std::vector<std::vector<llama_token>> toks(texts.size());
    std::vector<size_t> group;
    int group_tokens = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
        Embedding& e = out[i];
        e.error = text_problem(texts[i]);
        if (e.error.empty()) {
            // Raw text: special-token strings in it stay text.
            toks[i] = model.tokenize(texts[i], /*add_special=*/false, /*parse_special=*/false);
            if (toks[i].empty()) e.error = "the text has no tokens";
            if (add_bos) toks[i].insert(toks[i].begin(), bos);
            e.n_tokens = (int)toks[i].size();
            if (e.error.empty() && e.n_tokens > n_ctx)
                e.error = std::to_string(e.n_tokens) + " tokens do not fit the context of " +
                          std::to_string(n_ctx) + " tokens (raise --ctx)";
        }
        if (!e.error.empty()) continue;
        if (!group.empty() &&
            ((int)group.size() == params_.batch_seqs || group_tokens + e.n_tokens > n_ctx)) {
            run_group(toks, group, out);
            group.clear();
            group_tokens = 0;
        }
        group.push_back(i);
        group_tokens += e.n_tokens;
    }
    if (!group.empty()) run_group(toks, group, out);
    return out;
}

void Embedder::run_group(const std::vector<std::vector<llama_token>>& toks, const std::vector<size_t>& idx,
                         std::vector<Embedding>& out) {
    const ModelInfo& mi = session_.model().info();
    const bool add_bos = llama_vocab_get_add_bos(session_.model().vocab()) &&
                         llama_vocab_bos(session_.model().vocab()) != LLAMA_TOKEN_NULL;
    session_.clear();
    std::vector<std::unique_ptr<KvPool>> pools;
    std::vector<std::unique_ptr<KvObserver>> observers;
    std::vector<BatchToken> batch;
    for (size_t s = 0; s < idx.size(); ++s) {
        const std::vector<llama_token>& t = toks[idx[s]];
        const llama_pos begin = add_bos ? 1 : 0, end = (llama_pos)t.size();
        if (params_.kv) {
            pools.push_back(std::make_unique<KvPool>(params_.spec, mi.n_layer, mi.n_head_kv, mi.head_dim));
            observers.push_back(std::make_unique<PoolObserver>(*pools.back(), (llama_seq_id)s, begin, end));
        }
        if (params_.hidden)
            observers.push_back(std::make_unique<HiddenMeanObserver>(layers_, mi.n_layer, mi.n_embd,
                                                                     (llama_seq_id)s, begin, end));
        // The last layer's residual exists only for tokens with logits: ask for them all when it is pooled.
        for (size_t p = 0; p < t.size(); ++p)
            batch.push_back({t[p], (llama_pos)p, (llama_seq_id)s, params_.hidden || p + 1 == t.size()});
    }
    for (auto& o : observers) session_.capture().subscribe(o.get());
    try {
        session_.decode(batch, /*keep_logits=*/false);
    } catch (...) {
        for (auto& o : observers) session_.capture().unsubscribe(o.get());
        throw;
    }
    for (auto& o : observers) session_.capture().unsubscribe(o.get());

    const size_t per = (params_.kv ? 1 : 0) + (params_.hidden ? 1 : 0);
    for (size_t s = 0; s < idx.size(); ++s) {
        Embedding& e = out[idx[s]];
        if (params_.kv) {
            const KvPool& pool = *pools[s];
            const int64_t want = (int64_t)toks[idx[s]].size() - (add_bos ? 1 : 0);
            const int64_t want_pool =
                params_.spec.window > 0 ? std::min<int64_t>(want, params_.spec.window) : want;
            if (pool.count() != want_pool)
                throw Error("embed: sequence " + std::to_string(s) + " pooled " +
                            std::to_string(pool.count()) + " positions, expected " +
                            std::to_string(want_pool));
            e.kv = pool.result().data;
        }
        if (params_.hidden)
            e.hidden = static_cast<HiddenMeanObserver&>(*observers[s * per + per - 1]).result();
        e.ok = true;
    }
    session_.clear();
}

}  // namespace kvlens
