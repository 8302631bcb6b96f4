// kvlens: the command-line front end.
#include <cstdio>
#include <stdexcept>

#include "cli/common.h"
#include "util/error.h"

namespace kvlens::cli {

void add_model_options(CLI::App* app, ModelOptions& o) {
    app->add_option("-m,--model", o.model, "GGUF model file")->required();
    app->add_option("--ctx", o.ctx, "context size in tokens (KV cache, all sequences)")
        ->check(CLI::Range(8, 1 << 20))
        ->capture_default_str();
    app->add_option("--batch", o.batch, "max tokens per decode call")
        ->check(CLI::Range(1, 1 << 16))
        ->capture_default_str();
    app->add_option("-t,--threads", o.threads, "CPU threads (0: all)")
        ->check(CLI::Range(0, 1024))
        ->capture_default_str();
    app->add_option("--gpu-layers", o.gpu_layers, "layers to offload to a GPU (-1: all)")
        ->check(CLI::Range(-1, 100000))
        ->capture_default_str();
    app->add_option("--flash-attn", o.flash_attn, "flash attention")
        ->check(CLI::IsMember({"auto", "on", "off"}))
        ->capture_default_str();
    add_kv_source_option(app, o.kv_source);
    add_batch_invariant_flag(app, o.batch_invariant);
    app->add_flag("-v,--verbose", o.verbose, "show llama.cpp's log");
}

void add_kv_source_option(CLI::App* app, std::string& kv_source) {
    app->add_option(
           "--kv-source", kv_source,
           "where captured K/V come from: cache (the KV cache as stored, e.g. F16, what attention reads; one "
           "graph split per batch) or graph (F32 as computed, one split per layer; the default until issue "
           "#14)")
        ->check(CLI::IsMember({"graph", "cache"}))
        ->capture_default_str();
}

void add_batch_invariant_flag(CLI::App* app, bool& batch_invariant) {
    app->add_flag("--batch-invariant", batch_invariant,
                  "outputs independent of which sequences share a decode call (concurrent requests, "
                  "--parallel): ggml's reference CPU kernels, weights not repacked, flash attention on; "
                  "slower");
}

void add_rescore_flag(CLI::App* app, bool& rescore) {
    app->add_flag("--rescore", rescore,
                  "label the answers already in --out again with the dataset's current matcher, from their "
                  "stored outputs (no decoding), before resuming and reporting; the first labels are kept "
                  "under relabelled_from");
}

void add_pool_options(CLI::App* app, PoolOptions& o) {
    app->add_option("--kv-part", o.kv_part, "k, v or kv_cat ([K;V])")->capture_default_str();
    app->add_option("--pos-agg", o.pos_agg, "pool positions: mean, sum, last, first")->capture_default_str();
    app->add_option("--head-agg", o.head_agg, "heads: flatten or mean")->capture_default_str();
    app->add_option("--layer-agg", o.layer_agg,
                    "layers: none (one vector per layer), flatten, mean, sum, last")
        ->capture_default_str();
    app->add_option("--layers", o.layers, "layers: all, 0,3,-1, -4..-1 (negative = from the end)")
        ->capture_default_str();
    app->add_flag("--normalize", o.normalize, "L2-normalise each pooled vector");
    app->add_option("--window", o.window, "pool only the last W positions (0: all)")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
}

void add_token_coe_options(CLI::App* app, TokenCoeOptions& o) {
    app->add_option("--coe-layers", o.layers,
                    "KV-CoE (token axis): layers averaged per token: all, -4..-1, 0,3,-1")
        ->capture_default_str();
    app->add_option("--coe-kv-part", o.kv_part, "KV-CoE (token axis): k, v or kv_cat")->capture_default_str();
    app->add_option("--coe-positions", o.positions,
                    "KV-CoE (token axis): producer (last prompt position + generated) or generated")
        ->capture_default_str();
    app->add_option("--coe-head-agg", o.head_agg, "KV-CoE (token axis): heads flatten or mean")
        ->capture_default_str();
}

kvlens_model_ptr open_model(const ModelOptions& o) {
    kvlens_model_params mp = kvlens_model_default_params();
    mp.n_gpu_layers = o.gpu_layers;
    mp.verbose = o.verbose;
    mp.batch_invariant = o.batch_invariant;
    kvlens_model* m = nullptr;
    check(kvlens_model_load(o.model, mp, &m));
    return kvlens_model_ptr(m);
}

kvlens_session_params api_session_params(const ModelOptions& o, int n_seq_max) {
    kvlens_session_params sp = kvlens_session_default_params();
    sp.n_ctx = o.ctx;
    sp.n_batch = o.batch;
    sp.n_threads = o.threads;
    sp.n_seq_max = n_seq_max;
    sp.flash_attn = o.flash_attn == "on"    ? KVLENS_FLASH_ATTN_ON
                    : o.flash_attn == "off" ? KVLENS_FLASH_ATTN_OFF
                                            : KVLENS_FLASH_ATTN_AUTO;
    // The flag's own check (CLI::IsMember) has passed: "graph" or "cache".
    sp.kv_source = o.kv_source == "cache" ? KVLENS_KV_SOURCE_CACHE : KVLENS_KV_SOURCE_GRAPH;
    sp.batch_invariant = o.batch_invariant;
    return sp;
}

void set_token_coe(kvlens_session_params& p, const TokenCoeOptions& o) {
    p.coe_layers = o.layers;
    p.coe_kv_part = o.kv_part;
    p.coe_positions = o.positions;
    p.coe_head_agg = o.head_agg;
}

const std::map<std::string, std::string>& flag_names() {
    static const std::map<std::string, std::string> flags = {
        {"chat_template", "--template"},
        {"batch_invariant", "--batch-invariant"},
        {"coe_layers", "--coe-layers"},
        {"coe_kv_part", "--coe-kv-part"},
        {"coe_positions", "--coe-positions"},
        {"coe_head_agg", "--coe-head-agg"},
        {"calibration", "--calibration"},
        {"router", "--router"},
        {"layers", "--layers"},
        {"kv_part", "--kv-part"},
        {"head_agg", "--head-agg"},
        {"pos_agg", "--pos-agg"},
        {"layer_agg", "--layer-agg"},
        {"feature_layers", "--layers"},
        {"feature_kv_part", "--kv-part"},
        {"feature_head_agg", "--head-agg"},
        {"feature_pos_agg", "--pos-agg"},
        {"feature_layer_agg", "--layer-agg"},
        {"feature_window", "--window"},
        {"window", "--window"},
    };
    return flags;
}

const std::map<std::string, std::string>& coe_flag_names() {
    static const std::map<std::string, std::string> flags = {{"coe_layers", "--coe-layers"},
                                                             {"coe_kv_part", "--coe-kv-part"},
                                                             {"coe_positions", "--coe-positions"},
                                                             {"coe_head_agg", "--coe-head-agg"}};
    return flags;
}

void check(kvlens_status s, const std::map<std::string, std::string>& flags) {
    if (s == KVLENS_OK) return;
    const std::string m = kvlens_last_error();
    if (s == KVLENS_ERR_INTERNAL) throw std::runtime_error(m);  // main's "internal error", as before
    const size_t colon = m.find(": ");
    if (colon != std::string::npos) {
        const auto it = flags.find(m.substr(0, colon));
        // A field mapped to "": the message without it, as the command said it before.
        if (it != flags.end())
            throw Error(it->second.empty() ? m.substr(colon + 2) : it->second + m.substr(colon));
    }
    throw Error(m);
}

void check_calibration_file(kvlens_status s) {
    if (s != KVLENS_OK) throw Error(std::string("--calibration: ") + kvlens_last_error());
}

void check_calibrated(kvlens_status s) {
    const std::string prefix = "calibration: ";
    if (s == KVLENS_ERR_MODEL_MISMATCH && std::string(kvlens_last_error()).rfind(prefix, 0) == 0)
        throw Error(kvlens_last_error() + prefix.size());
    check(s, flag_names());
}

kvlens_think parse_think(const std::string& think) {
    if (think == "on") return KVLENS_THINK_ON;
    if (think == "off") return KVLENS_THINK_OFF;
    if (think == "default") return KVLENS_THINK_DEFAULT;
    throw Error("--think: think mode '" + think + "': unknown (known: on, off, default)");
}

void set_pooling(kvlens_generate_params& p, const PoolOptions& o) {
    p.feature_kv_part = o.kv_part;
    p.feature_pos_agg = o.pos_agg;
    p.feature_head_agg = o.head_agg;
    p.feature_layer_agg = o.layer_agg;
    p.feature_layers = o.layers;
    p.feature_normalize = o.normalize;
    p.feature_window = o.window;
}

}  // namespace kvlens::cli

int main(int argc, char** argv) {
    CLI::App app{
        "kvlens: the KV cache of an LLM as a free representation (KV-CoE, fast/slow thinking, embeddings)"};
    app.require_subcommand(1);
    app.set_help_all_flag("--help-all", "help for every subcommand");
    app.set_version_flag("--version", std::string("kvlens ") + kvlens_version());
    kvlens::cli::add_generate_command(app);
    kvlens::cli::add_dump_command(app);
    std::string command_line = "kvlens";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool quote = a.find_first_of(" \t\"'$") != std::string::npos || a.empty();
        command_line += " " + (quote ? "'" + a + "'" : a);
    }
    kvlens::cli::add_eval_command(app, command_line);
    kvlens::cli::add_embed_command(app);
    kvlens::cli::add_sample_command(app);
    kvlens::cli::add_router_command(app, command_line);
    kvlens::cli::add_serve_command(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        fprintf(stderr, "kvlens: error: %s (see --help)\n", e.what());
        return 2;
    } catch (const kvlens::Error& e) {
        fprintf(stderr, "kvlens: error: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        fprintf(stderr, "kvlens: internal error: %s\n", e.what());
        return 3;
    }
    return 0;
}
