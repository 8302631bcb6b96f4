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

void check_prompted_hybrid(const PromptedHybrid& h, const std::string& what) {
    if (h.close.empty()) throw Error(what + ": close must not be empty");
    if (h.marker.empty()) throw Error(what + ": marker must not be empty");
    if (h.close.find(h.marker) == std::string::npos)
        throw Error(what + ": close '" + h.close + "' does not contain the marker '" + h.marker +
                    "' (closing must end the reasoning)");
    if (h.slow.find(h.marker) != std::string::npos)
        throw Error(what + ": slow '" + h.slow + "' contains the marker '" + h.marker +
                    "' (a slow answer would start with its reasoning ended)");
}

std::string fast_slow_prompt(ChatTemplate tmpl, const std::vector<ChatMessage>& msgs,
                             const PromptedHybrid& prompted) {
    return prompted.active() ? render_chat(tmpl, msgs, true, ThinkMode::Default)
                             : render_chat_undecided(tmpl, msgs);
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
    const PromptedHybrid& ph = params.prompted;
    if (ph.active()) check_prompted_hybrid(ph, "prompted hybrid");
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
    r.prompt = model.tokenize(fast_slow_prompt(tmpl, msgs, ph), true, true);
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
    // Inside an open think block: the sampled text opened one and has not closed it yet. Prompted: the turn
    // was committed to slow mode and the marker has not appeared yet.
    bool reasoning = false;  // prompted: the slow text was entered
    auto in_think = [&] {
        if (ph.active()) return reasoning && shown.find(ph.marker) == std::string::npos;
        return shown.find("<think>") != std::string::npos && shown.find("</think>") == std::string::npos;
    };
    // The answer proper: after the last "</think>"; prompted, the whole text.
    auto answer_of = [&](const std::string& text) {
        return ph.active() ? text : after_last_think_close(text);
    };
    int close_at = -1;  // index in r.tokens where the answer after the think block starts
    const std::vector<llama_token> close =
        model.tokenize(ph.active() ? ph.close : think_close_text(tmpl), false, true);
    // On a copy of the sequence (seq + 1; the cache cells are shared, nothing is recomputed): append the
    // close and answer greedily, up to `budget` tokens (an end-of-turn included, last). The sequence itself
    // and `logits` are left as they were; the copy stays in the cache for the caller to keep or drop.
    struct ForkAnswer {
        std::vector<llama_token> tokens;
        double sum_prob = 0;  // of the chosen tokens, with_probs only
        bool eog = false;
        llama_pos end = 0;  // the copy's next position
    };
    auto answer_on_fork = [&](int budget, bool with_probs) {
        const llama_seq_id fork = seq + 1;
        session.seq_cp(seq, fork);
        ForkAnswer a;
        a.end = pos;
        std::vector<float> flog(n_vocab);
        auto ffeed = [&](const std::vector<llama_token>& toks) {
            std::vector<BatchToken> batch;
            for (size_t i = 0; i < toks.size(); ++i)
                batch.push_back({toks[i], a.end++, fork, i + 1 == toks.size()});
            session.decode(batch);
            const float* l = session.logits((int)toks.size() - 1);
            flog.assign(l, l + n_vocab);
        };
        ffeed(close);
        while ((int)a.tokens.size() < budget) {
            const llama_token t = (llama_token)(std::max_element(flog.begin(), flog.end()) - flog.begin());
            if (with_probs) a.sum_prob += step_stats(flog.data(), n_vocab, t).prob;
            a.tokens.push_back(t);
            if ((a.eog = model.is_eog(t))) break;
            if ((int)a.tokens.size() < budget) ffeed({t});
        }
        return a;
    };
    // The cut probe: is the answer already settled here? (The copy is dropped.)
    auto cut_probe = [&](TraceWindow& w) {
        if (seq + 1 >= session.n_seq_max())
            throw Error("fast/slow: the cut probe needs a session with " + std::to_string(seq + 2) +
                        " sequences, this one has " + std::to_string(session.n_seq_max()));
        const int budget = std::min(params.cut_max_tokens, n_ctx - (int)pos - (int)close.size() - 1);
        if (budget < 1) return;
        ForkAnswer a = answer_on_fork(budget, false);
        session.seq_rm(seq + 1);
        w.cut = true;
        w.cut_tokens = (int)a.tokens.size();
        w.cut_stop = a.eog ? StopReason::EndOfTurn : StopReason::MaxTokens;
        if (a.eog) a.tokens.pop_back();
        a.tokens.insert(a.tokens.begin(), close.begin(), close.end());
        w.cut_answer = answer_of(model.detokenize(a.tokens));
    };

    feed(r.prompt);
    const std::vector<float> prompt_logits = logits;
    r.prompt_features = pool.result().data;
    if (clf) r.prompt_score = clf->predict(r.prompt_features.data());
    r.initial = params.start == ThinkStart::Auto   ? route(r.prompt_score, params.policy)
                : params.start == ThinkStart::Fast ? ThinkChoice::Fast
                                                   : ThinkChoice::Slow;
    ThinkChoice mode = r.initial;
    auto enter = [&](ThinkChoice m) {  // the template's (or prompt's) text that commits the prompt to a mode
        const std::string suffix =
            ph.active() ? (m == ThinkChoice::Fast ? ph.fast : ph.slow)
                        : think_mode_suffix(tmpl, m == ThinkChoice::Fast ? ThinkMode::Off : ThinkMode::On);
        reasoning = m == ThinkChoice::Slow;
        if (!suffix.empty()) {
            const std::vector<llama_token> toks = model.tokenize(suffix, false, true);
            feed(toks);
            add(toks);
        }
        // The answer follows the empty think block, or a prompted fast text.
        if (ph.active() ? m == ThinkChoice::Fast : shown.find("</think>") != std::string::npos)
            close_at = (int)r.tokens.size();
    };
    enter(mode);

    // DEER's trial: on a copy of the sequence close the think block and answer greedily; an answer whose
    // mean token probability is above the threshold is kept (the copy becomes the sequence, `logits` those
    // after its last token), any other is dropped with its copy. Returns whether the answer ended the turn.
    int n_kept = 0;  // tokens of a kept trial (in r.tokens, not in n_sampled)
    auto deer_trial = [&] {
        const int budget = std::min(ex.trial_max_tokens, n_ctx - (int)pos - (int)close.size() - 1);
        if (budget < 1) return false;
        const ForkAnswer a = answer_on_fork(budget, true);
        const llama_seq_id fork = seq + 1;
        ++r.n_trials;
        r.n_trial += (int)a.tokens.size();
        if (!(a.sum_prob / (double)a.tokens.size() > ex.threshold)) {
            session.seq_rm(fork);
            return false;
        }
        session.seq_rm(seq);
        session.seq_cp(fork, seq);
        session.seq_rm(fork);
        add(close);
        r.n_switch_tokens += (int)close.size();
        close_at = (int)r.tokens.size();
        add(a.tokens);
        n_kept = (int)a.tokens.size();
        pos = a.end;
        if (!a.eog) feed({a.tokens.back()});  // the cap stopped the trial before feeding its last token
        return a.eog;
    };

    SamplerPtr sampler = make_sampler(params.sampling, params.sampling.seed);
    std::vector<llama_token_data> buf;
    bool switched = false;
    r.stop = StopReason::MaxTokens;
    bool thinking = in_think();
    // Leaves the think block now (a budget or a switch): the close is appended and the answer follows.
    auto close_think = [&](const char* why) {
        feed(close);
        add(close);
        r.n_switch_tokens = (int)close.size();
        close_at = (int)r.tokens.size();
        r.exit = why;
        r.switch_at = r.n_sampled;
        mode = ThinkChoice::Fast;
        thinking = false;
    };
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
            pos + (int)close.size() < n_ctx)
            close_think("budget");
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
            close_think("switch");
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
    r.answer = answer_of(r.text);
    return r;
}

}  // namespace kvlens
