// Options and helpers shared by the CLI subcommands. The CLI is a user of the public API (kvlens/kvlens.h)
// like any other program: it includes nothing of the engine, capture, methods or evaluation layers.
#pragma once

#include <CLI/CLI.hpp>

#include <map>
#include <memory>
#include <string>

#include "kvlens/kvlens.h"
#include "util/error.h"

namespace kvlens::cli {

struct ModelOptions {
    std::string model;
    int ctx = 4096;
    int batch = 512;
    int threads = 0;
    int gpu_layers = -1;
    std::string flash_attn = "auto";
    std::string kv_source = "cache";
    bool batch_invariant = false;
    bool verbose = false;
};

// -m/--model, --ctx, --batch, --threads, --gpu-layers, --flash-attn, --kv-source, --batch-invariant,
// --verbose.
void add_model_options(CLI::App* app, ModelOptions& o);

struct PoolOptions {
    std::string kv_part = "kv_cat", pos_agg = "mean", head_agg = "flatten", layer_agg = "none",
                layers = "all";
    bool normalize = false;
    int window = 0;
};
// --kv-source graph|cache (for commands with their own model options).
void add_kv_source_option(CLI::App* app, std::string& kv_source);
// --batch-invariant (SessionParams::batch_invariant), for the commands that open their own model (eval).
void add_batch_invariant_flag(CLI::App* app, bool& batch_invariant);

// --rescore of eval coe / eval sample: relabel the stored answers with the current matcher (eval/relabel.h).
void add_rescore_flag(CLI::App* app, bool& rescore);

// --kv-part, --pos-agg, --head-agg, --layer-agg, --layers, --normalize, --window.
void add_pool_options(CLI::App* app, PoolOptions& o);

// The token-axis KV-CoE knobs (kv_coe_*): --coe-layers, --coe-kv-part, --coe-positions, --coe-head-agg.
// Defaults are a session's (kvlens_session_default_params).
struct TokenCoeOptions {
    std::string layers = kvlens_session_default_params().coe_layers,
                kv_part = kvlens_session_default_params().coe_kv_part,
                positions = kvlens_session_default_params().coe_positions,
                head_agg = kvlens_session_default_params().coe_head_agg;
};
void add_token_coe_options(CLI::App* app, TokenCoeOptions& o);

// Runs f, prefixing a kvlens::Error's message with the flag whose value caused it.
template <typename F>
auto with_flag(const char* flag, F f) {
    try {
        return f();
    } catch (const Error& e) {
        throw Error(std::string(flag) + ": " + e.what());
    }
}

// ---- through the public API (kvlens/kvlens.h)

// The model of -m and its session's parameters (the token-axis KV-CoE at its defaults).
kvlens_model_ptr open_model(const ModelOptions& o);  // throws Error
kvlens_session_params api_session_params(const ModelOptions& o, int n_seq_max = 1);
// The --coe-* flags onto a session's parameters.
void set_token_coe(kvlens_session_params& p, const TokenCoeOptions& o);

// The flag that sets each parameter the public API names in its messages ("coe_layers: ..."), for the
// commands that have the usual flags.
const std::map<std::string, std::string>& flag_names();
// Only the --coe-* flags (for the evaluations, whose own messages name other things).
const std::map<std::string, std::string>& coe_flag_names();
// A public API call's failure as a kvlens::Error with the API's message, its leading parameter name replaced
// by the flag of `flags` that set it (or dropped when that is ""); KVLENS_ERR_INTERNAL as std::runtime_error
// (main's "internal error").
void check(kvlens_status s, const std::map<std::string, std::string>& flags = {});

// A calibration file named by --calibration, read before any work ("--calibration: ..." when it cannot be).
void check_calibration_file(kvlens_status s);
// A session opened with a calibration: one fitted for another model is refused with the calibration's own
// message; other failures as check(s, flag_names()).
void check_calibrated(kvlens_status s);
// --think on|off|default.
kvlens_think parse_think(const std::string& think);
// The pooling flags onto generate's feature parameters.
void set_pooling(kvlens_generate_params& p, const PoolOptions& o);

// Registered subcommands. Each returns the subcommand; its callback does the work.
CLI::App* add_generate_command(CLI::App& app);
CLI::App* add_dump_command(CLI::App& app);
CLI::App* add_eval_command(CLI::App& app, const std::string& command_line);
CLI::App* add_embed_command(CLI::App& app);
CLI::App* add_sample_command(CLI::App& app);
CLI::App* add_router_command(CLI::App& app, const std::string& command_line);
CLI::App* add_serve_command(CLI::App& app);

}  // namespace kvlens::cli
