#include "methods/sampling.h"

#include <cmath>
#include <memory>

#include "util/error.h"

namespace kvlens {

SampleSet sample_n(Session& session, const std::vector<llama_token>& prompt, const SampleParams& params,
                   llama_seq_id first_seq) {
    check_sampling_params(params.sampling);
    const int n = params.n;
    if (n < 1) throw Error("samples: " + std::to_string(n) + " must be >= 1");
    if (params.max_tokens < 1)
        throw Error("max_tokens: " + std::to_string(params.max_tokens) + " must be >= 1");
    if (prompt.empty()) throw Error("prompt: empty");
    if (first_seq < 0 || first_seq + n > session.n_seq_max())
        throw Error("sample: " + std::to_string(n) + " samples do not fit the session's " +
                    std::to_string(session.n_seq_max()) + " sequence slots");
    const int n_prompt = (int)prompt.size();
    int64_t used = n_prompt - 1 + n;  // cache cells: the shared prefix once, the last prompt token per sample
    if (used + 1 > session.n_ctx())
        throw Error("prompt: " + std::to_string(n_prompt) + " tokens and " + std::to_string(n) +
                    " samples do not fit the context of " + std::to_string(session.n_ctx()) + " tokens");

    const Model& model = session.model();
    const int n_vocab = model.info().n_vocab;
    const int64_t calls0 = session.n_decode_calls();
    SampleSet out;
    out.samples.resize(n);

    // Scorers first: they must see the last prompt position of every sequence.
    std::vector<std::unique_ptr<CoeScorer>> scorers;
    std::vector<SamplerPtr> samplers;
    for (int i = 0; i < n; ++i) {
        scorers.push_back(std::make_unique<CoeScorer>(session, first_seq + i, n_prompt, params.token_coe));
        samplers.push_back(make_sampler(params.sampling, params.sampling.seed + (uint32_t)i));
        out.samples[i].gen.seq = first_seq + i;
        out.samples[i].gen.prompt = prompt;
    }

    std::vector<BatchToken> batch;
    if (n_prompt > 1) {
        for (int t = 0; t + 1 < n_prompt; ++t) batch.push_back({prompt[t], (llama_pos)t, first_seq, false});
        session.decode(batch, false);
        out.n_tokens_decoded += (int64_t)batch.size();
        for (int i = 1; i < n; ++i) session.seq_cp(first_seq, first_seq + i, 0, n_prompt - 1);
    }
    batch.clear();
    std::vector<int> row(n);
    for (int i = 0; i < n; ++i) {
        row[i] = (int)batch.size();
        batch.push_back({prompt.back(), (llama_pos)(n_prompt - 1), first_seq + i, true});
    }
    session.decode(batch);
    out.n_tokens_decoded += (int64_t)batch.size();
    out.n_prompt_tokens_decoded = out.n_tokens_decoded;

    std::vector<bool> active(n, true);
    std::vector<llama_token_data> buf;
    for (int n_active = n; n_active > 0;) {
        if (params.keep_going && !params.keep_going()) {
            for (int i = 0; i < n; ++i)
                if (active[i]) out.samples[i].gen.stop = StopReason::Callback;
            break;
        }
        batch.clear();
        for (int i = 0; i < n; ++i) {
            if (!active[i]) continue;
            Generation& g = out.samples[i].gen;
            const float* logits = session.logits(row[i]);
            const llama_token tok = sample_token(samplers[i].get(), logits, n_vocab, buf);
            g.output.push_back(tok);
            g.steps.push_back(step_stats(logits, n_vocab, tok));
            bool stop = true;
            if (model.is_eog(tok)) {
                g.stop = StopReason::EndOfTurn;
            } else if ((int)g.output.size() >= params.max_tokens) {
                g.stop = StopReason::MaxTokens;
            } else if (used + 1 > session.n_ctx()) {
                g.stop = StopReason::ContextFull;
            } else {
                stop = false;
            }
            if (stop) {
                active[i] = false;
                --n_active;
                continue;
            }
            row[i] = (int)batch.size();
            batch.push_back({tok, (llama_pos)(n_prompt + g.output.size() - 1), g.seq, true});
            ++used;
        }
        if (!batch.empty()) {
            session.decode(batch);
            out.n_tokens_decoded += (int64_t)batch.size();
        }
    }

    for (int i = 0; i < n; ++i) {
        SampleOut& s = out.samples[i];
        std::vector<llama_token> visible = s.gen.output;
        if (s.gen.stop == StopReason::EndOfTurn) visible.pop_back();
        s.gen.text = model.detokenize(visible);
        s.coe = scorers[i]->result(s.gen.steps, s.gen.output);
        s.scores = s.coe.named();
    }
    out.n_decode_calls = session.n_decode_calls() - calls0;
    return out;
}

}  // namespace kvlens
