// kvlens embed: sentence embeddings from the KV cache of one forward pass per text; kvlens eval embed: their
// evaluation with a linear probe against baselines.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/common.h"
#include "io/npz.h"
#include "util/error.h"

namespace kvlens::cli {

namespace {

struct EmbedOptions {
    ModelOptions model;
    PoolOptions pool;
    std::string input = "-", out = "-", npy, field, on_error = "skip";
    bool no_normalize = false, hidden = false;
    int batch_seqs = 8;
};

// One input line: its 1-based number and text, or why it has no text.
struct InputLine {
    int64_t line;
    std::string text, error;
};

// Reads the next up-to-n lines (plain text, or JSONL with `field`); false at the end of the input.
bool read_lines(std::istream& in, const std::string& field, size_t n, int64_t& lineno,
                std::vector<InputLine>& out) {
    out.clear();
    std::string s;
    while (out.size() < n && std::getline(in, s)) {
        if (!s.empty() && s.back() == '\r') s.pop_back();
        InputLine l{++lineno, "", ""};
        if (field.empty()) {
            l.text = s;
        } else if (s.find_first_not_of(" \t") == std::string::npos) {
            l.error = "empty line";
        } else {
            const nlohmann::json j = nlohmann::json::parse(s, nullptr, /*allow_exceptions=*/false);
            if (j.is_discarded()) {
                l.error = "not valid JSON";
            } else if (!j.is_object() || !j.contains(field) || !j[field].is_string()) {
                l.error = "no string field '" + field + "'";
            } else {
                l.text = j[field].get<std::string>();
            }
        }
        out.push_back(std::move(l));
    }
    return !out.empty();
}

void run_embed(EmbedOptions o) {
    kvlens_embed_params ep = kvlens_embed_default_params();
    ep.kv_part = o.pool.kv_part;
    ep.pos_agg = o.pool.pos_agg;
    ep.head_agg = o.pool.head_agg;
    ep.layer_agg = o.pool.layer_agg;
    ep.layers = o.pool.layers;
    ep.normalize = !o.no_normalize;
    ep.window = o.pool.window;
    ep.hidden = o.hidden;
    check(kvlens_embed_params_check(ep), flag_names());
    if (!o.npy.empty()) {
        const std::filesystem::path dir = std::filesystem::path(o.npy).parent_path();
        if (!dir.empty() && !std::filesystem::is_directory(dir))
            throw Error("--npy '" + o.npy + "': directory '" + dir.string() + "' does not exist");
    }
    std::ifstream fin;
    if (o.input != "-") {
        fin.open(o.input, std::ios::binary);
        if (!fin) throw Error("--input '" + o.input + "': cannot open");
    }
    std::istream& in = o.input == "-" ? std::cin : fin;
    std::ofstream fout;
    if (o.out != "-") {
        fout.open(o.out, std::ios::binary | std::ios::trunc);
        if (!fout) throw Error("--out '" + o.out + "': cannot open for writing");
    }
    std::ostream& out = o.out == "-" ? std::cout : fout;

    const kvlens_model_ptr model = open_model(o.model);
    kvlens_session* s = nullptr;
    check(kvlens_session_open(model.get(), api_session_params(o.model, o.batch_seqs), &s));
    const kvlens_session_ptr session(s);
    // No text yet: the layers checked on the model, and the width of the vectors.
    int width = 0;
    std::vector<kvlens_text_embedding> es;
    check(kvlens_embed_each(session.get(), {}, ep, &es, &width), {{"layers", ""}});
    const std::string src = o.input == "-" ? "stdin" : o.input;

    std::vector<float> vecs;
    std::vector<int32_t> lines;
    int64_t lineno = 0, n_ok = 0, n_bad = 0, stop_line = 0;
    std::vector<InputLine> chunk;
    bool stop = false;
    // Chunks of several decode groups: output streams, memory stays bounded apart from the .npy rows.
    while (!stop && read_lines(in, o.field, (size_t)o.batch_seqs * 8, lineno, chunk)) {
        std::vector<std::string> texts;
        std::vector<size_t> which;  // chunk index of each text sent to the embedder
        for (size_t i = 0; i < chunk.size(); ++i) {
            if (!chunk[i].error.empty()) continue;
            texts.push_back(chunk[i].text);
            which.push_back(i);
        }
        check(kvlens_embed_each(session.get(), texts, ep, &es, nullptr), {{"layers", ""}});
        for (size_t k = 0; k < es.size(); ++k)
            if (!es[k].ok) chunk[which[k]].error = es[k].error;
        size_t k = 0;
        for (size_t i = 0; i < chunk.size(); ++i) {
            const InputLine& l = chunk[i];
            if (!l.error.empty()) {
                fprintf(stderr, "kvlens embed: %s line %lld: %s%s\n", src.c_str(), (long long)l.line,
                        l.error.c_str(),
                        o.on_error == "stop" ? " (stopping: --on-error stop)" : " (skipped)");
                out << nlohmann::json{{"line", l.line}, {"error", l.error}}.dump(
                           -1, ' ', false, nlohmann::json::error_handler_t::replace)
                    << "\n";
                ++n_bad;
                if (o.on_error == "stop") {
                    stop = true;
                    stop_line = l.line;
                    break;
                }
                continue;
            }
            while (which[k] != i) ++k;
            const kvlens_text_embedding& e = es[k];
            nlohmann::json j = {{"line", l.line}, {"n_tokens", e.n_tokens}, {"embedding", e.kv}};
            if (o.hidden) j["hidden"] = e.hidden;
            out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            vecs.insert(vecs.end(), e.kv.begin(), e.kv.end());
            lines.push_back((int32_t)l.line);
            ++n_ok;
        }
        out.flush();
    }
    if (!out) throw Error("--out '" + o.out + "': write failed");
    if (!o.npy.empty()) {
        // Rows are the embedded lines in order; <npy stem>.lines.npy holds their input line numbers.
        write_npy(o.npy, vecs.data(), {(size_t)n_ok, (size_t)width});
        const std::string lines_path = std::filesystem::path(o.npy).replace_extension(".lines.npy").string();
        write_npy(lines_path, lines.data(), {(size_t)n_ok});
    }
    fprintf(stderr, "kvlens embed: %lld texts embedded (width %d), %lld bad line%s%s\n", (long long)n_ok,
            width, (long long)n_bad, n_bad == 1 ? "" : "s", stop ? ", stopped at the first" : "");
    if (stop) throw Error(src + ": stopped at line " + std::to_string(stop_line) + " (--on-error stop)");
}

// The command line as typed (for the report), from /proc; "kvlens eval embed" where /proc is absent.
std::string command_line_of_this_process() {
    std::ifstream f("/proc/self/cmdline", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>()), out;
    size_t start = 0;
    for (size_t i = 0; i < all.size(); ++i) {
        if (all[i] != '\0') continue;
        std::string a = all.substr(start, i - start);
        if (start == 0) a = "kvlens";
        const bool quote = a.empty() || a.find_first_of(" \t\"'$") != std::string::npos;
        out += (start ? " " : "") + (quote ? "'" + a + "'" : a);
        start = i + 1;
    }
    return out.empty() ? "kvlens eval embed" : out;
}

}  // namespace

CLI::App* add_embed_command(CLI::App& app) {
    auto o = std::make_shared<EmbedOptions>();
    // The paper's preset as the defaults of the pooling flags.
    o->pool.kv_part = "kv_cat";
    o->pool.pos_agg = "mean";
    o->pool.head_agg = "mean";
    o->pool.layer_agg = "mean";
    o->pool.layers = "-4..-1";
    CLI::App* sub = app.add_subcommand(
        "embed",
        "sentence embeddings from the KV cache: one forward pass per text, several texts per decode");
    add_model_options(sub, o->model);
    add_pool_options(sub, o->pool);
    sub->add_flag("--no-normalize", o->no_normalize, "do not L2-normalise the vectors (the preset does)");
    sub->add_option("-i,--input", o->input, "texts, one per line (or JSONL with --field); - = stdin")
        ->capture_default_str();
    sub->add_option("--field", o->field, "read JSONL and take the text from this string field");
    sub->add_option("-o,--out", o->out,
                    "JSONL out, one object per input line: line, n_tokens, embedding (or error)")
        ->capture_default_str();
    sub->add_option(
        "--npy", o->npy,
        "also write the vectors as float32 [n, dim] .npy, and their input line numbers as <stem>.lines.npy");
    sub->add_flag("--hidden", o->hidden,
                  "also write the mean hidden state of the same layers (\"hidden\" in the JSONL)");
    sub->add_option("--batch-seqs", o->batch_seqs, "texts decoded together, one sequence each")
        ->check(CLI::Range(1, 256))
        ->capture_default_str();
    sub->add_option("--on-error", o->on_error, "a bad line (empty, invalid UTF-8, too long): skip it or stop")
        ->check(CLI::IsMember({"skip", "stop"}))
        ->capture_default_str();
    sub->callback([o] { run_embed(*o); });

    // kvlens eval embed: the eval command exists already (add_eval_command runs before this).
    CLI::App* eval = app.get_subcommand("eval");
    auto p = std::make_shared<kvlens_eval_embed_params>(kvlens_eval_embed_default_params());
    auto extras = std::make_shared<std::vector<std::string>>();
    CLI::App* ev = eval->add_subcommand(
        "embed",
        "KV embeddings vs mean hidden state, extra embeddings and random vectors: linear probe, k-fold CV");
    ev->add_option("-m,--model", p->model_path,
                   "GGUF model file (omit with --texts-only or to evaluate --extra only)");
    ev->add_option("--tasks", p->tasks, "task configs (data/embed_tasks/*.json)")
        ->required()
        ->check(CLI::ExistingFile);
    ev->add_option("-o,--out", p->out_dir,
                   "output directory: texts.jsonl, kv.npy, hidden.npy, results.json, report.md")
        ->required();
    ev->add_option("--extra", *extras,
                   "NAME=FILE.npy: another representation, float32 [n_texts, dim], rows in texts.jsonl order")
        ->delimiter(',');
    ev->add_option("--shard", p->shard,
                   "I/N: embed only the texts that hash to shard I of N (0 <= I < N) into samples.jsonl, no "
                   "report; run every I, on any machines, then kvlens eval merge computes the report");
    ev->add_flag("--texts-only", p->texts_only,
                 "write texts.jsonl and stop (to compute --extra embeddings from it)");
    ev->add_flag("!--no-hidden", p->hidden, "skip the mean-hidden-state baseline");
    ev->add_flag("!--no-random", p->random, "skip the random-vector baseline");
    ev->add_option("--batch-seqs", p->batch_seqs, "texts decoded together")
        ->check(CLI::Range(1, 256))
        ->capture_default_str();
    ev->add_option("--ctx", p->n_ctx, "context (tokens of all sequences of a decode)")
        ->check(CLI::Range(8, 1 << 20))
        ->capture_default_str();
    ev->add_option("-t,--threads", p->n_threads, "CPU threads (0: all)")
        ->check(CLI::Range(0, 1024))
        ->capture_default_str();
    add_kv_source_option(ev, p->kv_source);
    ev->add_option("--timing-texts", p->timing_texts, "time each representation alone on the first N texts")
        ->check(CLI::Range(0, 1 << 30))
        ->capture_default_str();
    ev->add_option("--C", p->probe_c, "probe: inverse L2 strength")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    ev->add_flag("!--no-standardize", p->probe_standardize,
                 "probe: use raw features (no z-scoring per fold)");
    ev->add_option("--max-iter", p->probe_max_iter, "probe: L-BFGS iterations at most")
        ->capture_default_str();
    ev->callback([p, extras] {
        for (const std::string& e : *extras) {
            const size_t eq = e.find('=');
            if (eq == 0 || eq == std::string::npos || eq + 1 == e.size())
                throw Error("--extra '" + e + "': expected NAME=FILE.npy");
            p->extras.emplace_back(e.substr(0, eq), e.substr(eq + 1));
        }
        p->command_line = command_line_of_this_process();
        check(kvlens_eval_embed(*p));
    });
    return sub;
}

}  // namespace kvlens::cli
