// kvlens public API: confidence scores (KV-CoE and baselines), fast/slow thinking and embeddings from the
// KV cache that llama.cpp computes while it decodes. This header is everything a program that uses an
// installed kvlens needs; it includes nothing of llama.cpp or of kvlens's internals.
//
// Shape (after llama.cpp's llama.h): a flat set of functions prefixed kvlens_, opaque handles, parameter
// structs obtained from kvlens_*_default_params() and then edited, and results returned as plain structs.
// It is a C++17 API (std::string / std::vector in parameters and results), not a C one.
//
//   kvlens_model* model = nullptr;
//   if (kvlens_model_load("model.gguf", kvlens_model_default_params(), &model) != KVLENS_OK)
//       fprintf(stderr, "%s\n", kvlens_last_error());
//   kvlens_session* session = nullptr;
//   kvlens_session_open(model, kvlens_session_default_params(), &session);
//   kvlens_generation g;
//   kvlens_generate(session, "What is 2+3?", kvlens_generate_default_params(), &g);
//   g.text, g.scores.at("kv_coe_r")
//   kvlens_session_free(session);
//   kvlens_model_free(model);
//
// Errors: no function here throws. Each returns a kvlens_status (KVLENS_OK = 0); on failure the output
// argument is left as it was and kvlens_last_error() gives a one-line message naming the parameter or file
// at fault. (Out of memory inside the library is reported as KVLENS_ERR_INTERNAL, not thrown.)
//
// Ownership: kvlens_model_load / kvlens_model_free and kvlens_session_open / kvlens_session_free are pairs
// (free functions accept nullptr); kvlens_model_ptr and kvlens_session_ptr below do the freeing for you. A
// session borrows its model: free every session before the model. Results (kvlens_generation, ...) are
// values owned by the caller.
//
// Threads: a model may be shared by sessions used on different threads at the same time; one session runs
// one call at a time (it owns one llama.cpp context and its KV cache).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

// The version of this header; kvlens_version() is the version of the library linked. CMake's project
// version is checked against these at configure time.
#define KVLENS_VERSION_MAJOR 0
#define KVLENS_VERSION_MINOR 1
#define KVLENS_VERSION_PATCH 0
#define KVLENS_VERSION_STRING "0.1.0"

// ---- errors
// ------------------------------------------------------------------------------------------------

// Every enum has the fixed type int: any int a caller passes is then a value the API can check and refuse
// (without it, a value outside the enumerators is undefined behaviour; UBSan found one in the tests).
enum kvlens_status : int {
    KVLENS_OK = 0,
    KVLENS_ERR_INVALID_ARGUMENT = 1,  // a null handle or output, a parameter out of range, an unknown name,
                                      // an empty prompt or text, a feature the session was not opened for
    KVLENS_ERR_FILE = 2,              // a model, router or calibration file missing, unreadable or malformed
    KVLENS_ERR_MODEL_MISMATCH = 3,    // a router or calibration made for another model
    KVLENS_ERR_RUNTIME = 4,           // decoding failed, e.g. the prompt does not fit the session's context
    KVLENS_ERR_INTERNAL = 5,          // anything else (out of memory, a bug): the message says what
};

// "ok", "invalid_argument", "file", "model_mismatch", "runtime", "internal".
const char* kvlens_status_name(kvlens_status status);
// The message of the last call on this thread that failed ("" after a success); valid until the next call.
const char* kvlens_last_error();
// The linked library's version, "MAJOR.MINOR.PATCH".
const char* kvlens_version();

// ---- model
// -------------------------------------------------------------------------------------------------

struct kvlens_model;  // a GGUF model's weights, loaded once

struct kvlens_model_params {
    int n_gpu_layers;  // layers offloaded to a GPU when there is one; -1: all
    bool verbose;      // llama.cpp's own logging (process-wide); false: errors only
};
kvlens_model_params kvlens_model_default_params();

// Loads a GGUF file. KVLENS_ERR_FILE: missing, not a GGUF file, truncated, or rejected by llama.cpp.
kvlens_status kvlens_model_load(const std::string& path, const kvlens_model_params& params,
                                kvlens_model** out);
void kvlens_model_free(kvlens_model* model);

struct kvlens_model_info {
    std::string path, arch, name;  // the file, general.architecture, general.name
    std::string chat_template;     // the template kvlens detects: chatml, qwen2, qwen3, deepseek-r1, llama3
    int n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
    int kv_width = 0;  // floats in one layer's K (or V) row: n_head_kv * head_dim
    int n_ctx_train = 0, n_vocab = 0;
};
kvlens_status kvlens_model_get_info(const kvlens_model* model, kvlens_model_info* out);

// Text -> token ids (add_special: BOS etc. as the model wants; special tokens such as "<|im_start|>" parsed).
kvlens_status kvlens_tokenize(const kvlens_model* model, const std::string& text, bool add_special,
                              std::vector<int32_t>* out);

// ---- session
// -----------------------------------------------------------------------------------------------

struct kvlens_session;  // one llama.cpp context (its KV cache) on a model, plus what scores and routes

enum kvlens_flash_attn : int {
    KVLENS_FLASH_ATTN_AUTO = 0,
    KVLENS_FLASH_ATTN_ON = 1,
    KVLENS_FLASH_ATTN_OFF = 2
};
// Where the captured K/V come from: the compute graph as each layer computes them (the default), or read back
// from the KV cache after each decode (a reference path; the CLI's --kv-source).
enum kvlens_kv_source : int { KVLENS_KV_SOURCE_GRAPH = 0, KVLENS_KV_SOURCE_CACHE = 1 };

struct kvlens_session_params {
    int n_ctx;      // tokens of KV cache (prompt + answer; the texts of one kvlens_embed batch together)
    int n_batch;    // tokens per decode call at most
    int n_seq_max;  // texts kvlens_embed decodes together (generation uses one sequence)
    int n_threads;  // 0: all hardware threads
    kvlens_flash_attn flash_attn;
    kvlens_kv_source kv_source;
    std::string chat_template;  // "auto" (from the GGUF), chatml, qwen2, qwen3, deepseek-r1, llama3
    // The token-axis KV-CoE (kv_coe_*), as the CLI's --coe-* flags: layers ("-4..-1", "all", "0,3,-1"),
    // kv_part (k, v, kv_cat), positions (producer, generated), head_agg (mean, flatten).
    std::string coe_layers, coe_kv_part, coe_positions, coe_head_agg;
    // A calibration file of `kvlens calibrate`: generations then also score p_correct.<score>. Refused
    // (KVLENS_ERR_MODEL_MISMATCH) when it was fitted on another model. Empty: none.
    std::string calibration_path;
    // A router of `kvlens router train`: enables KVLENS_THINK_AUTO. Empty: none.
    std::string router_path;
};
// n_ctx 4096, n_batch 512, n_seq_max 1, all threads, flash attention auto, K/V from the graph, template auto,
// KV-CoE on the
// last 4 layers' K, heads averaged, producer positions (the CLI's defaults); no calibration, no
// router.
kvlens_session_params kvlens_session_default_params();

// KVLENS_ERR_INVALID_ARGUMENT for a bad parameter, KVLENS_ERR_FILE / KVLENS_ERR_MODEL_MISMATCH for the
// calibration or router file.
kvlens_status kvlens_session_open(const kvlens_model* model, const kvlens_session_params& params,
                                  kvlens_session** out);
void kvlens_session_free(kvlens_session* session);

// ---- generation with scores, routing
// -----------------------------------------------------------------------

enum kvlens_think : int {
    KVLENS_THINK_DEFAULT = 0,  // as the chat template does by default
    KVLENS_THINK_ON = 1,       // hybrid reasoning models: think first
    KVLENS_THINK_OFF = 2,      // hybrid reasoning models: answer at once
    KVLENS_THINK_AUTO = 3,     // the session's router picks the mode on the prompt and may switch once
};

struct kvlens_generate_params {
    std::string system;  // a system message; empty: none
    kvlens_think think;
    bool raw;           // no chat template: the prompt is the model's input text (not with THINK_AUTO)
    int max_tokens;     // tokens to generate at most (>= 1)
    float temperature;  // 0: greedy
    int top_k;          // 0: off
    float top_p;        // 1: off
    uint32_t seed;
    bool scores;  // compute the scores (not with THINK_AUTO)
    // THINK_AUTO: tokens between two checks while decoding, the difficulty below which the answer is fast,
    // the switching hysteresis, and whether switching mid-answer is allowed at all.
    int check_every;
    float route_threshold, switch_delta;
    bool allow_switch;
};
// Default think, chat template, 256 tokens, greedy (top_k 40, top_p 0.95, seed 0 for when temperature > 0),
// scores on; THINK_AUTO: check every 16 tokens, threshold 50, delta 20, switching allowed.
kvlens_generate_params kvlens_generate_default_params();

struct kvlens_generation {
    std::string text;                    // the answer (thinking included), end-of-turn token excluded
    std::vector<int32_t> prompt_tokens;  // THINK_AUTO: the prompt before the mode was chosen
    std::vector<int32_t> output_tokens;  // generated, a final end-of-turn token included
    std::string stop;                    // end_of_turn, max_tokens, context_full
    // Every score of the answer by name: kv_coe_r, kv_coe_c, kv_coe_mag, kv_coe_ang (KV-CoE), kv_layer_coe_*,
    // hs_coe_* (hidden-state CoE), max_prob, inv_ppl, inv_entropy, neg_length; p_correct.<score> with a
    // calibration. NaN where undefined (e.g. a one-token answer). Empty with scores off or THINK_AUTO.
    std::map<std::string, double> scores;
    // THINK_AUTO only: the router's difficulty on the prompt (0..100), the mode it chose ("fast" / "slow")
    // and the final one, the sampled tokens before the switch (-1: none); tokens sampled (all of them, fast
    // tokens dropped by a fast -> slow switch included), tokens appended by the switch, tokens dropped; the
    // (sampled tokens so far, difficulty) of every check while decoding; the text after the last "</think>".
    double route_score = 0;
    std::string think_initial, think_final;
    int switch_at = -1, n_sampled = 0, n_switch_tokens = 0, n_dropped = 0;
    std::vector<std::pair<int, float>> checks;
    std::string answer;
};

// Answers `prompt` (a user message) in the session's sequence 0, which is emptied first. Identical to
// `kvlens generate --scores` (and `--think auto --router`) with the same parameters.
kvlens_status kvlens_generate(kvlens_session* session, const std::string& prompt,
                              const kvlens_generate_params& params, kvlens_generation* out);

// ---- embeddings
// --------------------------------------------------------------------------------------------

struct kvlens_embed_params {
    // Pooling of each text's K/V rows (the BOS row excluded): layers ("" = the last 4, or all of a smaller
    // model), kv_part (k, v, kv_cat), head_agg (mean, flatten), pos_agg (mean, sum, last, first); the
    // selected layers are averaged; normalize: L2-normalise each vector.
    std::string layers, kv_part, head_agg, pos_agg;
    bool normalize;
};
// The paper's preset: [K;V], tokens averaged, heads averaged, the last 4 layers averaged, L2-normalised.
kvlens_embed_params kvlens_embed_default_params();

struct kvlens_embeddings {
    int n = 0, width = 0;
    std::vector<float> data;  // n x width, row-major: text i is data[i * width, (i + 1) * width)
};

// One forward pass per text (no chat template, nothing generated); up to the session's n_seq_max texts are
// decoded together. A text that cannot be embedded (empty, invalid UTF-8, too long for n_ctx) fails the
// call with KVLENS_ERR_INVALID_ARGUMENT naming texts[i].
kvlens_status kvlens_embed(kvlens_session* session, const std::vector<std::string>& texts,
                           const kvlens_embed_params& params, kvlens_embeddings* out);

// ---- raw K/V
// -----------------------------------------------------------------------------------------------

struct kvlens_kv {
    int n_layer = 0, n_tokens = 0, kv_width = 0, n_embd = 0;
    std::vector<int32_t> tokens;
    std::vector<float> k, v;    // [n_layer, n_tokens, kv_width]: K after RoPE, and V, in position order
    std::vector<float> hidden;  // with hidden: [n_layer + 1, n_tokens, n_embd], embeddings then each layer
};

// The per-layer K and V of every token of `tokens`, from one forward pass in the session's sequence 0
// (emptied first), as `kvlens dump` reads them; they must fit n_ctx (more than n_batch are decoded in
// chunks).
kvlens_status kvlens_kv_of_tokens(kvlens_session* session, const std::vector<int32_t>& tokens, bool hidden,
                                  kvlens_kv* out);
// The same for a text, tokenized with the model's BOS (no chat template).
kvlens_status kvlens_kv_of_text(kvlens_session* session, const std::string& text, bool hidden,
                                kvlens_kv* out);

// ---- RAII ownership (optional)
// -----------------------------------------------------------------------------

struct kvlens_model_deleter {
    void operator()(kvlens_model* m) const { kvlens_model_free(m); }
};
struct kvlens_session_deleter {
    void operator()(kvlens_session* s) const { kvlens_session_free(s); }
};
using kvlens_model_ptr = std::unique_ptr<kvlens_model, kvlens_model_deleter>;
using kvlens_session_ptr = std::unique_ptr<kvlens_session, kvlens_session_deleter>;
