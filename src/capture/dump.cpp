#include "capture/dump.h"

#include <algorithm>

#include "capture/observers.h"
#include "util/error.h"

namespace kvlens {

namespace {

// Rows of one tap into [n_layers, T, width], ordered by position 0..T-1.
std::vector<float> gather(const RowRecorder& rec, Tap tap, int layer0, int n_layers, int T, int width) {
    std::vector<float> out((size_t)n_layers * T * width);
    for (int l = 0; l < n_layers; ++l) {
        for (int t = 0; t < T; ++t) {
            const std::vector<float>* r = rec.get(tap, layer0 + l, 0, t);
            if (r == nullptr || (int)r->size() != width)
                throw Error("dump: no captured row for layer " + std::to_string(layer0 + l) + " position " +
                            std::to_string(t) + " (unsupported graph layout?)");
            std::copy(r->begin(), r->end(), out.begin() + ((size_t)l * T + t) * width);
        }
    }
    return out;
}

}  // namespace

KvDump dump_kv(Session& session, const std::vector<llama_token>& tokens, bool hidden, int decode_from) {
    const ModelInfo& mi = session.model().info();
    const int T = (int)tokens.size();
    if (T < 1) throw Error("dump: no tokens");
    if (T > session.n_ctx())
        throw Error("prompt: " + std::to_string(T) + " tokens do not fit the context of " +
                    std::to_string(session.n_ctx()) + " tokens (raise --ctx)");
    if (decode_from < 0 || decode_from > T)
        throw Error("decode-from: " + std::to_string(decode_from) + " is outside 0.." + std::to_string(T) +
                    " (the number of tokens)");
    std::vector<Tap> taps = {Tap::K, Tap::V};
    if (hidden) taps.insert(taps.end(), {Tap::Embd, Tap::Hidden});
    RowRecorder rec(taps, 0);
    session.capture().subscribe(&rec);
    // The last layer's residual stream only exists for tokens with logits: request them all for hidden.
    const int first = decode_from > 0 ? decode_from : T;
    std::vector<BatchToken> batch;
    for (int t = 0; t < first; ++t) batch.push_back({tokens[t], t, 0, hidden || t == first - 1});
    try {
        session.decode(batch, /*keep_logits=*/false);
        for (int t = first; t < T; ++t) session.decode({{tokens[t], t, 0, true}}, /*keep_logits=*/false);
    } catch (...) {
        session.capture().unsubscribe(&rec);
        throw;
    }
    session.capture().unsubscribe(&rec);

    KvDump d;
    d.n_layer = mi.n_layer;
    d.n_tokens = T;
    d.kv_width = mi.kv_width();
    d.n_embd = mi.n_embd;
    d.k = gather(rec, Tap::K, 0, d.n_layer, T, d.kv_width);
    d.v = gather(rec, Tap::V, 0, d.n_layer, T, d.kv_width);
    if (hidden) {
        d.hidden = gather(rec, Tap::Embd, -1, 1, T, mi.n_embd);
        const std::vector<float> layers = gather(rec, Tap::Hidden, 0, d.n_layer, T, mi.n_embd);
        d.hidden.insert(d.hidden.end(), layers.begin(), layers.end());
    }
    return d;
}

}  // namespace kvlens
