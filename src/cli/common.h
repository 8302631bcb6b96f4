// Options and helpers shared by the CLI subcommands.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "capture/pooling.h"
#include "engine/model.h"
#include "methods/coe.h"
#include "util/error.h"

namespace kvlens::cli {

struct ModelOptions {
    std::string model;
    int ctx = 4096;
    int batch = 512;
    int threads = 0;
    int gpu_layers = -1;
    std::string flash_attn = "auto";
    std::string kv_source = "graph";
    bool verbose = false;
};

// -m/--model, --ctx, --batch, --threads, --gpu-layers, --flash-attn, --kv-source, --verbose.
void add_model_options(CLI::App* app, ModelOptions& o);
std::unique_ptr<Model> load_model(const ModelOptions& o);
SessionParams session_params(const ModelOptions& o, int n_seq_max = 1);

struct PoolOptions {
    std::string kv_part = "kv_cat", pos_agg = "mean", head_agg = "flatten", layer_agg = "none",
                layers = "all";
    bool normalize = false;
    int window = 0;
};
// --kv-source graph|cache (for commands with their own model options).
void add_kv_source_option(CLI::App* app, std::string& kv_source);

// --kv-part, --pos-agg, --head-agg, --layer-agg, --layers, --normalize, --window.
void add_pool_options(CLI::App* app, PoolOptions& o);
PoolSpec pool_spec(const PoolOptions& o);  // throws Error naming the flag

// The token-axis KV-CoE knobs (kv_coe_*): --coe-layers, --coe-kv-part, --coe-positions, --coe-head-agg.
// Defaults are TokenCoeSpec's.
struct TokenCoeOptions {
    std::string layers = TokenCoeSpec{}.layers, kv_part = to_string(TokenCoeSpec{}.kv_part),
                positions = to_string(TokenCoeSpec{}.positions),
                head_agg = to_string(TokenCoeSpec{}.head_agg);
};
void add_token_coe_options(CLI::App* app, TokenCoeOptions& o);
TokenCoeSpec token_coe_spec(const TokenCoeOptions& o);  // throws Error naming the flag

// Runs f, prefixing a kvlens::Error's message with the flag whose value caused it.
template <typename F>
auto with_flag(const char* flag, F f) {
    try {
        return f();
    } catch (const Error& e) {
        throw Error(std::string(flag) + ": " + e.what());
    }
}

// Registered subcommands. Each returns the subcommand; its callback does the work.
CLI::App* add_generate_command(CLI::App& app);
CLI::App* add_dump_command(CLI::App& app);
CLI::App* add_eval_command(CLI::App& app, const std::string& command_line);
CLI::App* add_embed_command(CLI::App& app);
CLI::App* add_sample_command(CLI::App& app);
CLI::App* add_router_command(CLI::App& app, const std::string& command_line);
CLI::App* add_serve_command(CLI::App& app);

}  // namespace kvlens::cli
