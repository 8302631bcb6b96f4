// kvlens dump: the raw per-layer K and V (and hidden states) of every position, as .npz for numpy.
#include <cstdio>
#include <filesystem>

#include "cli/common.h"
#include "io/npz.h"
#include "util/error.h"

namespace kvlens::cli {

namespace {

struct DumpOptions {
    ModelOptions model;
    std::string prompt, tokens, out;
    bool hidden = false, no_bos = false;
    int decode_from = 0;
};

void run_dump(const DumpOptions& o) {
    if (o.prompt.empty() == o.tokens.empty())
        throw Error("dump: give exactly one of -p/--prompt and --tokens");
    const std::filesystem::path dir = std::filesystem::path(o.out).parent_path();
    if (!dir.empty() && !std::filesystem::is_directory(dir))
        throw Error("--out '" + o.out + "': directory '" + dir.string() + "' does not exist");
    const kvlens_model_ptr model = open_model(o.model);
    kvlens_model_info mi;
    check(kvlens_model_get_info(model.get(), &mi));
    std::vector<int32_t> toks;
    if (o.tokens.empty())
        check(kvlens_tokenize(model.get(), o.prompt, !o.no_bos, &toks, /*parse_special=*/true));
    else
        check(kvlens_parse_tokens(model.get(), o.tokens, &toks));
    const int T = (int)toks.size();

    kvlens_session* s = nullptr;
    check(kvlens_session_open(model.get(), api_session_params(o.model), &s));
    const kvlens_session_ptr session(s);
    // Everything is gathered first, so that a failure leaves no partial file behind.
    kvlens_kv d;
    check(kvlens_kv_of_tokens(session.get(), toks, o.hidden, &d, o.decode_from),
          {{"decode_from", "--decode-from"}});
    const int L = d.n_layer, W = d.kv_width;
    std::vector<int32_t> pos(T);
    for (int t = 0; t < T; ++t) pos[t] = t;
    const std::vector<float>&k = d.k, &v = d.v, &h = d.hidden;
    NpzWriter npz(o.out);
    npz.add("tokens", toks.data(), {(size_t)T});
    npz.add("pos", pos.data(), {(size_t)T});
    npz.add("k", k.data(), {(size_t)L, (size_t)T, (size_t)W});
    npz.add("v", v.data(), {(size_t)L, (size_t)T, (size_t)W});
    if (o.hidden) npz.add("hidden", h.data(), {(size_t)L + 1, (size_t)T, (size_t)mi.n_embd});
    const int32_t n_layer = L, n_head_kv = mi.n_head_kv, head_dim = mi.head_dim;
    npz.add("n_layer", &n_layer, {});
    npz.add("n_head_kv", &n_head_kv, {});
    npz.add("head_dim", &head_dim, {});
    npz.close();
    fprintf(stderr, "kvlens dump: %d tokens x %d layers (K, V%s) -> %s\n", T, L, o.hidden ? ", hidden" : "",
            o.out.c_str());
}

}  // namespace

CLI::App* add_dump_command(CLI::App& app) {
    auto o = std::make_shared<DumpOptions>();
    CLI::App* sub =
        app.add_subcommand("dump", "write the raw per-layer K, V (and hidden states) of a text as .npz");
    add_model_options(sub, o->model);
    sub->add_option("-p,--prompt", o->prompt,
                    "text to run (tokenized with the model's BOS, special tokens parsed)");
    sub->add_option("--tokens", o->tokens, "comma-separated token ids to run instead of a text");
    sub->add_flag("--no-bos", o->no_bos, "do not add the BOS token to --prompt");
    sub->add_option("-o,--out", o->out,
                    "output .npz: tokens, pos, k, v [layer, pos, n_head_kv*head_dim], hidden")
        ->required();
    sub->add_flag(
        "--hidden", o->hidden,
        "also write hidden [n_layer+1, pos, n_embd]: token embeddings, then the residual after each layer");
    sub->add_option(
           "--decode-from", o->decode_from,
           "N > 0: the first N tokens as one batch, then one token per batch, as generate computes a "
           "prompt of N tokens and its answer (0: one batch)")
        ->check(CLI::Range(0, 1 << 24))
        ->capture_default_str();
    sub->callback([o] { run_dump(*o); });
    return sub;
}

}  // namespace kvlens::cli
