#include "methods/fast_slow.h"

#include <algorithm>

#include "capture/observers.h"
#include "capture/pooling.h"
#include "util/error.h"

namespace kvlens {

ThinkStart parse_think_start(const std::string& s) {
    if (s == "fast") return ThinkStart::Fast;
    if (s == "slow") return ThinkStart::Slow;
    if (s == "auto") return ThinkStart::Auto;
    throw Error("start mode '" + s + "': unknown (known: fast, slow, auto)");
}

const char* to_string(ThinkStart s) {
    switch (s) {
        case ThinkStart::Fast:
            return "fast";
        case ThinkStart::Slow:
            return "slow";
        case ThinkStart::Auto:
            return "auto";
    }
    return "?";
}

namespace {

// Subscribes an observer for the lifetime of the object.
class Subscription {
public:
    Subscription(KvCapture& c, KvObserver* o) : c_(c), o_(o) { c_.subscribe(o_); }
    ~Subscription() { c_.unsubscribe(o_); }
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;

private:
    KvCapture& c_;
    KvObserver* o_;
};

std::string after_last_think_close(const std::string& text) {
    const size_t at = text.rfind("</think>");
    return at == std::string::npos ? text : text.substr(at + 8);
}

}  // namespace

FastSlowResult run_fast_slow(Session& session, ChatTemplate tmpl, const std::vector<ChatMessage>& msgs,
                             const RouterFeatures& features, const KvClassifier* clf,
                             const FastSlowParams& params, llama_seq_id seq) {
    check_sampling_params(params.sampling);
    if (params.max_tokens < 1) throw Error("max_tokens: must be >= 1");
    if (!clf && (params.start == ThinkStart::Auto || params.allow_switch))
        throw Error("fast/slow: routing and switching need a router (KV classifier)");
    if (params.policy.check_every < 1) throw Error("check_every: must be >= 1");
    if (params.trace_every < 0) throw Error("trace_every: must be >= 0");
    if (params.cut_max_tokens < 0) throw Error("cut_max_tokens: must be >= 0");
    const Model& model = session.model();
    const ModelInfo& mi = model.info();
    if (clf && clf->n_features() != 2 * mi.kv_width())
        throw Error("fast/slow: the router reads " + std::to_string(clf->n_features()) +
                    " features, this model's KV window gives " + std::to_string(2 * mi.kv_width()));

    KvPool pool(router_pool_spec(features, mi.n_layer), mi.n_layer, mi.n_head_kv, mi.head_dim);
    PoolObserver observer(pool, seq);
    Subscription sub(session.capture(), &observer);

    FastSlowResult r;
    r.prompt = model.tokenize(render_chat_undecided(tmpl, msgs), true, true);
    const int n_ctx = session.n_ctx();
    if ((int)r.prompt.size() + 8 > n_ctx)
        throw Error("prompt: " + std::to_string(r.prompt.size()) + " tokens do not fit the context of " +
                    std::to_string(n_ctx));

    const int n_vocab = mi.n_vocab;
    std::vector<float> logits(n_vocab);
    llama_pos pos = 0;
    // Decodes tokens at the end of the sequence; keeps the last one's logits.
    auto feed = [&](const std::vector<llama_token>& toks) {
        std::vector<BatchToken> batch;
        for (size_t i = 0; i < toks.size(); ++i) batch.push_back({toks[i], pos++, seq, i + 1 == toks.size()});
        session.decode(batch);
        const float* l = session.logits((int)toks.size() - 1);
        logits.assign(l, l + n_vocab);
    };
    auto predict = [&] { return clf->predict(pool.result().data.data()); };
    // Inside an open think block: the sampled text opened one and has not closed it yet.
    auto in_think = [&] {
        const std::string so_far = model.detokenize(r.tokens, true);
        return so_far.find("<think>") != std::string::npos && so_far.find("</think>") == std::string::npos;
    };
    const std::vector<llama_token> close = model.tokenize(think_close_text(tmpl), false, true);
    // The cut probe: on a copy of the sequence (the cache cells are shared, nothing is recomputed), close
    // the think block and answer greedily; the sequence itself and `logits` are left as they were.
    auto cut_probe = [&](TraceWindow& w) {
        const llama_seq_id fork = seq + 1;
        if (fork >= session.n_seq_max())
            throw Error("fast/slow: the cut probe needs a session with " + std::to_string(fork + 1) +
                        " sequences, this one has " + std::to_string(session.n_seq_max()));
        const int budget = std::min(params.cut_max_tokens, n_ctx - (int)pos - (int)close.size() - 1);
        if (budget < 1) return;
        session.seq_cp(seq, fork);
        llama_pos fpos = pos;
        std::vector<float> flog(n_vocab);
        auto ffeed = [&](const std::vector<llama_token>& toks) {
            std::vector<BatchToken> batch;
            for (size_t i = 0; i < toks.size(); ++i)
                batch.push_back({toks[i], fpos++, fork, i + 1 == toks.size()});
            session.decode(batch);
            const float* l = session.logits((int)toks.size() - 1);
            flog.assign(l, l + n_vocab);
        };
        ffeed(close);
        std::vector<llama_token> out = close;
        w.cut_stop = StopReason::MaxTokens;
        while (w.cut_tokens < budget) {
            const llama_token t = (llama_token)(std::max_element(flog.begin(), flog.end()) - flog.begin());
            ++w.cut_tokens;
            if (model.is_eog(t)) {
                w.cut_stop = StopReason::EndOfTurn;
                break;
            }
            out.push_back(t);
            if (w.cut_tokens < budget) ffeed({t});
        }
        session.seq_rm(fork);
        w.cut = true;
        w.cut_answer = after_last_think_close(model.detokenize(out));
    };

    feed(r.prompt);
    const std::vector<float> prompt_logits = logits;
    r.prompt_features = pool.result().data;
    if (clf) r.prompt_score = clf->predict(r.prompt_features.data());
    r.initial = params.start == ThinkStart::Auto   ? route(r.prompt_score, params.policy)
                : params.start == ThinkStart::Fast ? ThinkChoice::Fast
                                                   : ThinkChoice::Slow;
    ThinkChoice mode = r.initial;
    auto enter = [&](ThinkChoice m) {  // the template's text that commits the prompt to a mode
        const std::string suffix =
            think_mode_suffix(tmpl, m == ThinkChoice::Fast ? ThinkMode::Off : ThinkMode::On);
        if (suffix.empty()) return;
        const std::vector<llama_token> toks = model.tokenize(suffix, false, true);
        feed(toks);
        r.tokens.insert(r.tokens.end(), toks.begin(), toks.end());
    };
    enter(mode);

    SamplerPtr sampler = make_sampler(params.sampling, params.sampling.seed);
    std::vector<llama_token_data> buf;
    bool switched = false;
    r.stop = StopReason::MaxTokens;
    while (r.n_sampled < params.max_tokens) {
        if (params.on_token && r.n_sampled > 0 &&
            !params.on_token(r, mode == ThinkChoice::Slow || switched || !params.allow_switch)) {
            r.stop = StopReason::Callback;
            break;
        }
        if (pos >= n_ctx) {
            r.stop = StopReason::ContextFull;
            break;
        }
        const llama_token t = sample_token(sampler.get(), logits.data(), n_vocab, buf);
        ++r.n_sampled;
        r.tokens.push_back(t);
        if (model.is_eog(t)) {
            r.stop = StopReason::EndOfTurn;
            break;
        }
        feed({t});
        if (params.trace_every > 0 && r.n_sampled % params.trace_every == 0) {
            TraceWindow w;
            w.at = r.n_sampled;
            w.mode = mode;
            w.in_think = mode == ThinkChoice::Slow && in_think();
            w.features = pool.result().data;
            if (w.in_think && params.cut_max_tokens > 0) cut_probe(w);
            r.trace.push_back(std::move(w));
        }
        if (!params.allow_switch || switched || r.n_sampled % params.policy.check_every != 0) continue;
        const float d = predict();
        r.checks.emplace_back(r.n_sampled, d);
        if (!should_switch(mode, d, params.policy)) continue;
        if (mode == ThinkChoice::Slow) {
            // Only inside an open think block: close it and answer.
            if (!in_think()) continue;
            if (pos + (int)close.size() >= n_ctx) continue;
            feed(close);
            r.tokens.insert(r.tokens.end(), close.begin(), close.end());
            r.n_switch_tokens = (int)close.size();
            mode = ThinkChoice::Fast;
        } else {
            // A fast answer cannot grow a think block in the answer region: go back to the prompt's end
            // (the prompt stays cached) and think from there.
            session.seq_rm(seq, (llama_pos)r.prompt.size(), -1);
            pos = (llama_pos)r.prompt.size();
            r.n_dropped = r.n_sampled;
            r.tokens.clear();
            logits = prompt_logits;
            mode = ThinkChoice::Slow;
            enter(mode);
        }
        r.switch_at = r.n_sampled;
        switched = true;
    }
    r.final = mode;
    std::vector<llama_token> visible = r.tokens;
    if (!visible.empty() && model.is_eog(visible.back())) visible.pop_back();
    r.text = model.detokenize(visible);
    r.answer = after_last_think_close(r.text);
    return r;
}

}  // namespace kvlens
