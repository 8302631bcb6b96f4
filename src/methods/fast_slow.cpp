#include "methods/fast_slow.h"

#include <algorithm>
#include <chrono>

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

ThinkExitPolicy parse_think_exit(const std::string& s) {
    ThinkExitPolicy p;
    auto number = [&](const std::string& v, auto conv) {
        size_t used = 0;
        try {
            const auto x = conv(v, &used);
            if (used == v.size()) return (double)x;
        } catch (const std::exception&) {
        }
        throw Error("'" + s + "': '" + v + "' is not a number");
    };
    if (s.rfind("budget:", 0) == 0) {
        p.kind = ThinkExit::Budget;
        const double n = number(s.substr(7), [](const std::string& v, size_t* u) { return std::stol(v, u); });
        if (n < 1 || n > (1 << 24)) throw Error("'" + s + "': the budget must be in [1, 16777216]");
        p.budget = (int)n;
    } else if (s == "deer" || s.rfind("deer:", 0) == 0) {
        p.kind = ThinkExit::Deer;
        if (s.size() > 4) {
            const double t =
                number(s.substr(5), [](const std::string& v, size_t* u) { return std::stod(v, u); });
            if (!(t >= 0 && t <= 1e6)) throw Error("'" + s + "': the threshold must be >= 0");
            p.threshold = (float)t;
        }
    }
    return p;
}

std::string to_string(const ThinkExitPolicy& p) {
    if (p.kind == ThinkExit::Budget) return "budget:" + std::to_string(p.budget);
    if (p.kind != ThinkExit::Deer) return "";
    char buf[32];
    snprintf(buf, sizeof buf, "deer:%g", p.threshold);
    return buf;
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
    const ThinkExitPolicy& ex = params.exit;
    if (ex.kind != ThinkExit::None) {
        if (params.start != ThinkStart::Slow || params.allow_switch)
            throw Error("think exit: " + to_string(ex) + " needs a slow start without switching");
        if (ex.kind == ThinkExit::Budget && ex.budget < 1) throw Error("think: budget must be >= 1");
        if (ex.kind == ThinkExit::Deer && !(ex.threshold >= 0))
            throw Error("think: deer threshold must be >= 0");
        if (ex.kind == ThinkExit::Deer && ex.trial_max_tokens < 1)
            throw Error("think: deer trial_max_tokens must be >= 1");
        if (ex.kind == ThinkExit::Deer && seq + 1 >= session.n_seq_max())
            throw Error("think: deer's trials need a session with " + std::to_string(seq + 2) +
                        " sequences, this one has " + std::to_string(session.n_seq_max()));
    }
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t calls0 = session.n_decode_calls();
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
    // r.tokens as text (special tokens rendered), kept along so that the think state costs no
    // re-detokenizing.
    std::string shown;
    auto add = [&](const std::vector<llama_token>& toks) {
        r.tokens.insert(r.tokens.end(), toks.begin(), toks.end());
        shown += model.detokenize(toks, true);
    };
    // Inside an open think block: the sampled text opened one and has not closed it yet.
    auto in_think = [&] {
        return shown.find("<think>") != std::string::npos && shown.find("</think>") == std::string::npos;
    };
    int close_at = -1;  // index in r.tokens where the answer after the think block starts
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
        add(toks);
        if (shown.find("</think>") != std::string::npos) close_at = (int)r.tokens.size();  // the empty block
    };
    enter(mode);

    // DEER's trial: on a copy of the sequence close the think block and answer greedily; an answer whose
    // mean token probability is above the threshold is kept (the copy becomes the sequence, `logits` those
    // after its last token), any other is dropped with its copy. Returns whether the answer ended the turn.
    int n_kept = 0;  // tokens of a kept trial (in r.tokens, not in n_sampled)
    auto deer_trial = [&] {
        const llama_seq_id fork = seq + 1;
        const int budget = std::min(ex.trial_max_tokens, n_ctx - (int)pos - (int)close.size() - 1);
        if (budget < 1) return false;
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
        std::vector<llama_token> out;
        double sum_p = 0;
        bool eog = false;
        while ((int)out.size() < budget) {
            const llama_token t = (llama_token)(std::max_element(flog.begin(), flog.end()) - flog.begin());
            sum_p += step_stats(flog.data(), n_vocab, t).prob;
            out.push_back(t);
            if ((eog = model.is_eog(t))) break;
            if ((int)out.size() < budget) ffeed({t});
        }
        ++r.n_trials;
        r.n_trial += (int)out.size();
        if (!(sum_p / (double)out.size() > ex.threshold)) {
            session.seq_rm(fork);
            return false;
        }
        session.seq_rm(seq);
        session.seq_cp(fork, seq);
        session.seq_rm(fork);
        add(close);
        r.n_switch_tokens += (int)close.size();
        close_at = (int)r.tokens.size();
        add(out);
        n_kept = (int)out.size();
        pos = fpos;
        if (!eog) feed({out.back()});  // the cap stopped the trial before feeding its last token
        return eog;
    };

    SamplerPtr sampler = make_sampler(params.sampling, params.sampling.seed);
    std::vector<llama_token_data> buf;
    bool switched = false;
    r.stop = StopReason::MaxTokens;
    bool thinking = in_think();
    while (r.n_sampled + n_kept < params.max_tokens) {
        if (params.on_token && r.n_sampled > 0 &&
            !params.on_token(r, mode == ThinkChoice::Slow || switched || !params.allow_switch)) {
            r.stop = StopReason::Callback;
            break;
        }
        if (pos >= n_ctx) {
            r.stop = StopReason::ContextFull;
            break;
        }
        if (ex.kind == ThinkExit::Budget && thinking && r.n_think >= ex.budget &&
            pos + (int)close.size() < n_ctx) {
            feed(close);
            add(close);
            r.n_switch_tokens = (int)close.size();
            close_at = (int)r.tokens.size();
            r.exit = "budget";
            r.switch_at = r.n_sampled;
            mode = ThinkChoice::Fast;
            thinking = false;
        }
        const llama_token t = sample_token(sampler.get(), logits.data(), n_vocab, buf);
        ++r.n_sampled;
        add({t});
        const bool was_thinking = thinking;
        thinking = in_think();
        if (was_thinking || thinking) ++r.n_think;
        if (was_thinking && !thinking) {
            close_at = (int)r.tokens.size();
            r.exit = "model";
        }
        if (model.is_eog(t)) {
            r.stop = StopReason::EndOfTurn;
            break;
        }
        feed({t});
        if (ex.kind == ThinkExit::Deer && thinking &&
            model.detokenize({t}, true).find('\n') != std::string::npos &&
            r.n_sampled + n_kept < params.max_tokens) {
            const bool trial_ended = deer_trial();
            if (close_at >= 0) {  // kept
                r.exit = "deer";
                r.switch_at = r.n_sampled;
                mode = ThinkChoice::Fast;
                thinking = false;
                if (trial_ended) {
                    r.stop = StopReason::EndOfTurn;
                    break;
                }
            }
        }
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
            add(close);
            r.n_switch_tokens = (int)close.size();
            close_at = (int)r.tokens.size();
            r.exit = "switch";
            thinking = false;
            mode = ThinkChoice::Fast;
        } else {
            // A fast answer cannot grow a think block in the answer region: go back to the prompt's end
            // (the prompt stays cached) and think from there.
            session.seq_rm(seq, (llama_pos)r.prompt.size(), -1);
            pos = (llama_pos)r.prompt.size();
            r.n_dropped = r.n_sampled;
            r.tokens.clear();
            shown.clear();
            close_at = -1;
            r.n_think = 0;
            logits = prompt_logits;
            mode = ThinkChoice::Slow;
            enter(mode);
            thinking = in_think();
        }
        r.switch_at = r.n_sampled;
        switched = true;
    }
    r.final = mode;
    // The answer proper: what follows the think block's close, wherever the close came from.
    if (close_at >= 0) r.n_answer = (int)r.tokens.size() - close_at;
    r.n_decode_calls = session.n_decode_calls() - calls0;
    r.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::vector<llama_token> visible = r.tokens;
    if (!visible.empty() && model.is_eog(visible.back())) visible.pop_back();
    r.text = model.detokenize(visible);
    r.answer = after_last_think_close(r.text);
    return r;
}

}  // namespace kvlens
