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
#include <functional>
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
    KVLENS_ERR_BUSY = 6,              // a service's line of requests is full: retry later
};

// "ok", "invalid_argument", "file", "model_mismatch", "runtime", "internal", "busy".
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
    // Weights as the file has them, not repacked for batched kernels: needed by sessions with
    // batch_invariant (which see). Slower prefill on quantisations ggml repacks (Q4_0, Q4_K, IQ4_NL).
    // Refused (naming the tensor) for a model with an F32/F16/BF16 matrix where ggml has llamafile's sgemm.
    bool batch_invariant;
};
kvlens_model_params kvlens_model_default_params();

// Loads a GGUF file. KVLENS_ERR_FILE: missing, not a GGUF file, truncated, or rejected by llama.cpp.
kvlens_status kvlens_model_load(const std::string& path, const kvlens_model_params& params,
                                kvlens_model** out);
void kvlens_model_free(kvlens_model* model);

struct kvlens_model_info {
    std::string path, arch, name;    // the file, general.architecture, general.name
    std::string chat_template;       // the template kvlens detects: chatml, qwen2, qwen3, deepseek-r1, llama3
    std::string gguf_chat_template;  // tokenizer.chat_template as the file has it (Jinja), may be empty
    int n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
    int kv_width = 0;  // floats in one layer's K (or V) row: n_head_kv * head_dim
    int n_ctx_train = 0, n_vocab = 0;
};
kvlens_status kvlens_model_get_info(const kvlens_model* model, kvlens_model_info* out);

// Text -> token ids (add_special: BOS etc. as the model wants; parse_special: special tokens such as
// "<|im_start|>" parsed, else taken as text).
kvlens_status kvlens_tokenize(const kvlens_model* model, const std::string& text, bool add_special,
                              std::vector<int32_t>* out, bool parse_special = true);
// Token ids -> text (render_special: special tokens as their text, else left out).
kvlens_status kvlens_detokenize(const kvlens_model* model, const std::vector<int32_t>& tokens,
                                bool render_special, std::string* out);
// A comma-separated list of token ids ("1,2,3", as `kvlens dump --tokens`), each checked against the
// vocabulary; KVLENS_ERR_INVALID_ARGUMENT naming the bad item.
kvlens_status kvlens_parse_tokens(const kvlens_model* model, const std::string& list,
                                  std::vector<int32_t>* out);

// ---- chat templates
// ----------------------------------------------------------------------------------------

struct kvlens_chat_message {
    std::string role, content;  // system, user, assistant
};

// Forward declared for kvlens_chat_render; see below.
enum kvlens_think : int;

// `messages` as the model's input text in a chat template ("auto": the one kvlens detects in the GGUF;
// chatml, qwen2, qwen3, deepseek-r1, llama3), with the assistant's turn opened in `think` mode (DEFAULT, ON,
// OFF) when add_assistant_prefix. Tokenize it with parse_special.
kvlens_status kvlens_chat_render(const kvlens_model* model, const std::string& chat_template,
                                 const std::vector<kvlens_chat_message>& messages, kvlens_think think,
                                 bool add_assistant_prefix, std::string* out);

// ---- session
// -----------------------------------------------------------------------------------------------

struct kvlens_session;  // one llama.cpp context (its KV cache) on a model, plus what scores and routes

enum kvlens_flash_attn : int {
    KVLENS_FLASH_ATTN_AUTO = 0,
    KVLENS_FLASH_ATTN_ON = 1,
    KVLENS_FLASH_ATTN_OFF = 2
};
// Where the captured K/V come from: read back from the KV cache after each decode, i.e. what attention reads
// (the default since issue #14: one graph split per batch, not one per layer), or the compute graph's F32
// nodes as each layer computes them (the CLI's --kv-source).
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
    // Batch-invariant decoding: every sequence's logits bit-identical whichever other sequences share its
    // decode calls (the server's concurrent requests, n_seq_max > 1), so greedy outputs do not change with
    // load. ggml's reference CPU kernels and flash attention (forced on; flash_attn OFF is refused); needs a
    // model loaded with batch_invariant, a CPU-only build and llama.cpp built from source (kvlens' default).
    // Costs throughput: docs/results/bench/README.md measures how much.
    bool batch_invariant;
    // false: nothing is captured, not even asked for (no eval callback in llama.cpp's graph): plain
    // generation, ~1% faster decoding; kvlens_generate with scores, features or routing is then refused.
    bool capture;
};
// n_ctx 4096, n_batch 512, n_seq_max 1, all threads, flash attention auto, K/V from the KV cache, template
// auto, KV-CoE on the last 4 layers' K, heads averaged, producer positions (the CLI's defaults); no
// calibration, no router, not batch-invariant, capture on.
kvlens_session_params kvlens_session_default_params();

// The checks of kvlens_session_open that need neither the model nor a file (ranges, the names of kv_source,
// chat_template and the coe_* fields), so that a front end can refuse a bad parameter before it loads a
// model. KVLENS_ERR_INVALID_ARGUMENT, the message naming the field ("coe_layers: ...").
kvlens_status kvlens_session_params_check(const kvlens_session_params& params);

// KVLENS_ERR_INVALID_ARGUMENT for a bad parameter, KVLENS_ERR_FILE / KVLENS_ERR_MODEL_MISMATCH for the
// calibration or router file.
kvlens_status kvlens_session_open(const kvlens_model* model, const kvlens_session_params& params,
                                  kvlens_session** out);
void kvlens_session_free(kvlens_session* session);

// Where `kvlens calibrate -m MODEL` saves a calibration of `score`, and "auto" looks for it:
// <model path without .gguf>.calibration.<score>.json.
std::string kvlens_default_calibration_path(const std::string& model_path, const std::string& score);

// ---- generation with scores, routing
// -----------------------------------------------------------------------

enum kvlens_think : int {
    KVLENS_THINK_DEFAULT = 0,  // as the chat template does by default
    KVLENS_THINK_ON = 1,       // hybrid reasoning models: think first
    KVLENS_THINK_OFF = 2,      // hybrid reasoning models: answer at once
    KVLENS_THINK_AUTO = 3,     // the session's router picks the mode on the prompt and may switch once
    // The training-free peers of THINK_AUTO (no router; chat template with thinking, not raw, no scores or
    // features): think, and after think_budget think tokens append the end of the think block and answer
    // (Qwen3's thinking budget)...
    KVLENS_THINK_BUDGET = 4,
    // ... or, at each line break inside the think block, close it on a copy of the sequence and answer
    // greedily for up to deer_trial_tokens; when that trial answer's mean token probability is above
    // deer_threshold it is kept (decoding goes on from its end), else dropped (DEER-style early exit; the
    // session needs n_seq_max >= 2).
    KVLENS_THINK_DEER = 5,
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
    // THINK_BUDGET: think tokens (>= 1; the open tag counts). THINK_DEER: the exit threshold (>= 0; 0 exits
    // at the first line break, above 1 never) and a trial's tokens at most (>= 1).
    int think_budget;
    float deer_threshold;
    int deer_trial_tokens;
    // Pooled KV features of the generation (`kvlens generate --features`; not with THINK_AUTO): the
    // positions pooled (generated, producer: the last prompt position and the generated ones, prompt, all),
    // kv_part (k, v, kv_cat), pos_agg (mean, sum, last, first), head_agg (flatten, mean), layer_agg (none: a
    // vector per layer, flatten, mean, sum, last), layers ("all", "0,3,-1", "-4..-1"), L2 normalisation, and
    // a window of the last W positions (0: all).
    bool features;
    std::string feature_positions, feature_kv_part, feature_pos_agg, feature_head_agg, feature_layer_agg,
        feature_layers;
    bool feature_normalize;
    int feature_window;
};
// Default think, chat template, 256 tokens, greedy (top_k 40, top_p 0.95, seed 0 for when temperature > 0),
// scores on; THINK_AUTO: check every 16 tokens, threshold 50, delta 20, switching allowed; THINK_BUDGET 256;
// THINK_DEER: threshold 0.95 (DEER's), trials of 32 tokens; no features
// (when on: generated positions, [K;V] averaged over positions, heads flattened, a vector per layer, all
// layers, not normalised, no window).
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
    // Every think mode: the policy that ran ("default", "on", "off", "auto", "budget:64", "deer:0.95"); how
    // the think block ended (model, budget, deer, switch; "" when none was open); the cost, counted honestly:
    // output tokens up to the end of the think block (tags included) and after it, the tokens decoded in
    // DEER's trials (kept or dropped) and how many trials, every llama_decode call (the prompt's included)
    // and the wall-clock of the generation. Generated in all: output_tokens + n_trial_tokens, less a kept
    // trial's tokens, which are in both.
    std::string think_policy, think_exit;
    int n_think_tokens = 0, n_answer_tokens = 0, n_trial_tokens = 0, n_trials = 0;
    int64_t n_decode_calls = 0;
    double wall_ms = 0;
    // With scores: the token-axis KV-CoE's chain: the layers it averaged (resolved on the model), its states,
    // the magnitude and angle change of each step, and its status ("ok" or why the chain is undefined).
    std::vector<int> coe_layers;
    int64_t coe_n_states = 0;
    std::vector<double> coe_m, coe_a;
    std::string coe_status;
    // With features: n_vectors x width floats (row-major), the layers and the number of positions pooled.
    int feature_width = 0, feature_n_vectors = 0;
    std::vector<float> feature_data;
    std::vector<int> feature_layers;
    int64_t feature_n_positions = 0;
};

// A think policy by name onto params: default, on, off, auto, budget:N (N >= 1), deer or deer:T (T >= 0)
// set think (and think_budget / deer_threshold). KVLENS_ERR_INVALID_ARGUMENT naming "think" otherwise.
kvlens_status kvlens_think_parse(const std::string& name, kvlens_generate_params* params);

// The checks of kvlens_generate that need no model (the feature pooling's names); the message names the
// field.
kvlens_status kvlens_generate_params_check(const kvlens_generate_params& params);

// Answers `prompt` (a user message) in the session's sequence 0, which is emptied first. Identical to
// `kvlens generate --scores` (and `--think auto --router`) with the same parameters.
kvlens_status kvlens_generate(kvlens_session* session, const std::string& prompt,
                              const kvlens_generate_params& params, kvlens_generation* out);

// ---- scoring a given answer
// -------------------------------------------------------------------------------------

struct kvlens_score_params {
    kvlens_think think;  // DEFAULT, ON or OFF: the prompt as generation would render it
    bool end_of_turn;    // close the answer with the template's end-of-turn token, scored too
};
// Think default, end of turn on.
kvlens_score_params kvlens_score_default_params();

struct kvlens_answer_scores {
    std::map<std::string, double> scores;  // as kvlens_generation::scores (no p_correct)
    int n_prompt = 0;
    std::vector<int32_t> tokens;  // the answer's tokens as decoded
    std::string stop;
};

// The scores of `answer` to `messages` by teacher forcing: its tokens decoded in the session's sequence 0
// (emptied first) after the chat prompt as if generated, with the same capture and step statistics, so that
// the model's own answer gets generation's scores. KVLENS_ERR_INVALID_ARGUMENT for no messages or an empty
// answer.
kvlens_status kvlens_score_answer(kvlens_session* session, const std::vector<kvlens_chat_message>& messages,
                                  const std::string& answer, const kvlens_score_params& params,
                                  kvlens_answer_scores* out);

// ---- N samples, one answer chosen
// --------------------------------------------------------------------------------------

struct kvlens_sample_params {
    std::string system;  // a system message; empty: none
    kvlens_think think;  // DEFAULT, ON or OFF
    int n;               // samples, decoded together (the session needs n_seq_max >= n)
    int max_tokens;      // per sample
    float temperature;
    int top_k;
    float top_p;
    uint32_t seed;  // sample i uses seed + i
    // Answer extraction (last_number, number_after_answer, boxed, choice_letter) and, when not empty, the
    // reference answer each sample is judged against.
    std::string matcher, reference;
    // first, best (best-of-N by score), majority, weighted (a vote weighted by calibrated probabilities); the
    // score (a calibration of the session names its own); abstain when the choice's confidence is below
    // abstain_below (< 0: never).
    std::string strategy, score;
    double abstain_below;
};
// `kvlens sample`'s defaults: 4 samples of 256 tokens, temperature 0.7, top_k 0, top_p 0.95, seed 0,
// last_number, majority vote, score hs_coe_c, never abstain.
kvlens_sample_params kvlens_sample_default_params();
// The checks that need no model (matcher, strategy, the sampling parameters); the message names the field.
kvlens_status kvlens_sample_params_check(const kvlens_sample_params& params);

struct kvlens_sample {
    std::string text, extracted, stop;  // extracted: the matcher's answer, "" when none
    int n_output_tokens = 0;
    std::map<std::string, double> scores;     // as kvlens_generation::scores, without p_correct
    std::map<std::string, double> p_correct;  // p_correct.<score> with the session's calibration
    double selection_score = 0;               // what the strategy read: the calibrated p, else the raw score
    bool correct = false;                     // with a reference: matched and ended by itself
};
struct kvlens_samples {
    std::vector<kvlens_sample> samples;
    std::string score;  // the selection score's name
    int chosen = 0;     // the chosen sample
    std::string answer;
    double confidence = 0;
    int votes = 0;  // samples that gave the chosen answer
    bool abstained = false;
};

// N answers to `prompt` (a user message), decoded together in sequences 0..n-1 (emptied first), each scored;
// one chosen by the strategy or abstained on. KVLENS_ERR_INVALID_ARGUMENT for the weighted strategy without a
// calibration, or a score no sample has.
kvlens_status kvlens_sample_n(kvlens_session* session, const std::string& prompt,
                              const kvlens_sample_params& params, kvlens_samples* out);

// ---- calibration files
// ---------------------------------------------------------------------------------------

// A calibration (`kvlens calibrate`): method (isotonic, platt, logistic), the score it calibrates
// ("combined[:<name>]" for logistic), direction (+1: P(correct) increases with the raw score), the logistic
// features with their training mean, std (0: dropped) and weight per standard deviation, bias and ridge, the
// training samples (correct ones) and AUROC, the part of the questions it trained on, and the model it was
// fitted for (described, "" when not recorded).
struct kvlens_calibration_info {
    std::string path, method, score;
    int direction = 1;
    std::vector<std::string> features;
    std::vector<double> mean, sd, weights;
    double bias = 0, ridge = 0;
    int n = 0, n_correct = 0;
    double train_auroc = 0;
    std::string part, model;
    int n_lines = 0, n_skipped = 0;  // kvlens_calibrate: labelled lines read, skipped for a null score
};
// Reads a calibration file. KVLENS_ERR_FILE naming it.
kvlens_status kvlens_calibration_load(const std::string& path, kvlens_calibration_info* out);

struct kvlens_calibrate_params {
    std::string
        from;  // labelled JSONL: samples.jsonl of eval coe / eval sample, or sample output with a reference
    std::string method;                 // isotonic, platt or logistic
    std::vector<std::string> features;  // logistic: the scores to combine; isotonic / platt: the one score
    std::string name;                   // logistic: the score is "combined:<name>" (empty: "combined")
    std::string part;                   // the questions to train on, split by id: dev, test or all
    double ridge;                       // logistic: the L2 penalty on the standardised weights
    // The model it is for (checked against the training run's, recorded when that has none), and where it is
    // saved: out_path, else next to model_path (kvlens_default_calibration_path). One of them is needed.
    std::string model_path, out_path;
};
// Isotonic, all questions, ridge 1.
kvlens_calibrate_params kvlens_calibrate_default_params();
// Fits and saves a calibration; `out` describes it (path: where it went).
kvlens_status kvlens_calibrate(const kvlens_calibrate_params& params, kvlens_calibration_info* out);

// ---- embeddings
// --------------------------------------------------------------------------------------------

struct kvlens_embed_params {
    // Pooling of each text's K/V rows (the BOS row excluded): layers ("" = the last 4, or all of a smaller
    // model), kv_part (k, v, kv_cat), head_agg (mean, flatten), pos_agg (mean, sum, last, first), layer_agg
    // (how the selected layers combine: mean, sum, last, flatten, none: a vector per layer, concatenated);
    // normalize: L2-normalise each vector; window: only the last W tokens (0: all).
    std::string layers, kv_part, head_agg, pos_agg, layer_agg;
    bool normalize;
    int window;
    bool hidden;  // kvlens_embed_each: also the mean hidden state of the same layers (L2-normalised)
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

// The checks of kvlens_embed that need no model (the pooling's names); the message names the field.
kvlens_status kvlens_embed_params_check(const kvlens_embed_params& params);

// One text's embedding, or why it has none (ok false: empty, invalid UTF-8, too long for n_ctx).
struct kvlens_text_embedding {
    bool ok = false;
    std::string error;
    int n_tokens = 0;           // tokens decoded, BOS included
    std::vector<float> kv;      // the pooled vector(s), `width` floats
    std::vector<float> hidden;  // n_embd floats with params.hidden
};
// As kvlens_embed, but a text that cannot be embedded fails only its own result (`kvlens embed`'s
// --on-error); width: the floats of each kv vector.
kvlens_status kvlens_embed_each(kvlens_session* session, const std::vector<std::string>& texts,
                                const kvlens_embed_params& params, std::vector<kvlens_text_embedding>* out,
                                int* width);

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
// chunks). decode_from N > 0: the first N tokens as one batch, then one token per batch, as generation
// computes a prompt of N tokens and its answer (<= the number of tokens).
kvlens_status kvlens_kv_of_tokens(kvlens_session* session, const std::vector<int32_t>& tokens, bool hidden,
                                  kvlens_kv* out, int decode_from = 0);
// The same for a text, tokenized with the model's BOS (no chat template).
kvlens_status kvlens_kv_of_text(kvlens_session* session, const std::string& text, bool hidden,
                                kvlens_kv* out);

// ---- evaluations
// -------------------------------------------------------------------------------------------------
// The harness of `kvlens eval coe | sample | merge`: each runs (or resumes) a whole evaluation and writes its
// directory (samples.jsonl, run.json, report.md, plots); progress goes to stderr. Fields are named as the
// CLI's flags. Errors: KVLENS_ERR_INVALID_ARGUMENT naming the field, else the status of what failed.

// Where the built-in dataset configs are: KVLENS_DATA_DIR, else those installed beside the library or the
// CLI, else the source tree it was built from.
std::string kvlens_data_dir();

struct kvlens_eval_coe_params {
    std::string model_path, dataset, data_dir, out_dir;  // dataset: a built-in name or a config .json
    int limit;                                           // first N samples (0: all), chosen before sharding
    std::string shard;      // "I/N": only the samples whose id hashes to shard I of N; "": all
    int max_tokens;         // 0: the dataset config's
    int parallel;           // answers decoded together
    int n_ctx;              // 0: parallel x (longest prompt + max tokens)
    int n_threads;          // 0: all
    std::string kv_source;  // graph | cache
    bool batch_invariant;   // as kvlens_session_params: answers independent of `parallel`; slower
    std::string chat_template, think;
    std::string coe_layers, coe_kv_part, coe_positions, coe_head_agg;  // as kvlens_session_params
    int bootstrap;
    uint64_t seed;
    double dev_fraction;
    std::string command_line;  // recorded in the report
    bool rescore;  // relabel the stored answers with the current matcher first (after a matcher change)
    // Score the stored answers again, each in one teacher-forced pass, with this call's kv_source and
    // coe_* (which may differ from the run's); the answers and labels stay.
    bool recompute_scores;
};
kvlens_eval_coe_params kvlens_eval_coe_default_params();  // the CLI's defaults; data_dir kvlens_data_dir()
kvlens_status kvlens_eval_coe(const kvlens_eval_coe_params& params);

struct kvlens_eval_sample_params {
    std::string model_path, dataset, data_dir, out_dir;
    int limit;
    std::string shard;
    std::string part;  // all | dev | test: only the questions of that part of eval coe's split
    double dev_fraction;
    int max_tokens;
    std::vector<int> ns;  // sample counts N; max(N) samples are drawn per question
    float temperature;
    int top_k;
    float top_p;
    uint32_t seed;
    std::vector<std::string> scores;  // selection scores
    std::string calibration;          // isotonic | platt
    int n_ctx, n_threads;
    std::string kv_source, chat_template, think;
    std::string coe_layers, coe_kv_part, coe_positions, coe_head_agg;
    std::string command_line;
    bool rescore;  // relabel the stored answers with the current matcher first (after a matcher change)
};
kvlens_eval_sample_params kvlens_eval_sample_default_params();
kvlens_status kvlens_eval_sample(const kvlens_eval_sample_params& params);

// Joins the output directories of one eval coe / eval sample run's shards into out_dir (new or empty), as one
// machine would have written it; refuses shards that do not make up one run, writing nothing.
kvlens_status kvlens_eval_merge(const std::vector<std::string>& dirs, const std::string& out_dir,
                                const std::string& command_line);

// `kvlens eval embed`: KV embeddings against the mean hidden state, extra representations and random vectors,
// by a linear probe with k-fold cross-validation on each task (texts.jsonl, kv.npy, hidden.npy, results.json,
// report.md).
struct kvlens_eval_embed_params {
    std::string model_path;          // empty: evaluate the extras only, or texts_only
    std::vector<std::string> tasks;  // task configs (data/embed_tasks/*.json)
    std::string out_dir;
    std::vector<std::pair<std::string, std::string>> extras;  // NAME, FILE.npy: rows in texts.jsonl order
    bool texts_only;                                          // write texts.jsonl and stop
    bool hidden, random;  // the mean-hidden-state and random-vector baselines
    int batch_seqs, n_ctx, n_threads;
    std::string kv_source;
    int timing_texts;  // time each representation alone on the first N texts (0: no timing)
    double probe_c;    // the probe's inverse L2 strength
    bool probe_standardize;
    int probe_max_iter;
    std::string shard;  // "I/N": embed only the texts of shard I of N (no report: eval merge makes it)
    std::string command_line;
};
kvlens_eval_embed_params kvlens_eval_embed_default_params();
kvlens_status kvlens_eval_embed(const kvlens_eval_embed_params& params);

// `kvlens router label | train | eval`: the fast/slow KV classifier of a hybrid reasoning model.
struct kvlens_router_label_params {
    std::string model_path, dataset, data_dir, out_dir;  // out_dir: labels.jsonl, run.json, report.md
    std::string chat_template;
    std::string preset;  // the feature window: seq_len/n_layers (32/8, 64/4, 128/2)
    int limit;
    std::string shard;
    std::string part;  // dev | test | all: only that part of the split by id (train on dev, report on test)
    double dev_fraction;  // the split's development fraction (0.3)
    int max_tokens;       // per mode (0: the dataset's)
    int long_tokens;      // a correct fast answer this long is labelled 25
    int windows;          // also label windows every N sampled tokens along both answers (0: off)
    int cut_max_tokens;   // answer budget of the cut probe
    int n_ctx, n_threads;
    std::string kv_source;
    std::string command_line;
};
kvlens_router_label_params kvlens_router_label_default_params();
kvlens_status kvlens_router_label(const kvlens_router_label_params& params);

struct kvlens_router_train_params {
    std::vector<std::string> label_dirs;  // outputs of kvlens_router_label for one model
    std::string out_path;                 // the router file (a report goes to <out_path>.md)
    std::string preset;                   // paper or tuned
    std::string windows;                  // prompt, or all (the windows along the answers too)
    int epochs;                           // 0: the preset's
    double lr;                            // 0: the preset's
    int64_t seed;                         // < 0: the preset's
    std::string command_line;
};
kvlens_router_train_params kvlens_router_train_default_params();
kvlens_status kvlens_router_train(const kvlens_router_train_params& params);

struct kvlens_router_eval_params {
    std::string model_path, router_path, dataset, data_dir, out_dir;
    std::string chat_template;
    int check_every;
    float route_threshold, switch_delta;  // as kvlens_generate_params
    int limit;
    std::string shard;
    std::string part;  // as kvlens_router_label_params
    double dev_fraction;
    int max_tokens, n_ctx, n_threads;
    std::string kv_source;
    int long_tokens;
    // Rows beside the four modes: KVLENS_THINK_BUDGET per budget, KVLENS_THINK_DEER per threshold (trials of
    // deer_trial_tokens at most). Empty: none.
    std::vector<int> budgets;
    std::vector<float> deer_thresholds;
    int deer_trial_tokens;
    std::string command_line;
};
kvlens_router_eval_params kvlens_router_eval_default_params();
kvlens_status kvlens_router_eval(const kvlens_router_eval_params& params);

// ---- the OpenAI-compatible service
// --------------------------------------------------------------------------------------------
// Chat completions (with the scores, the thinking mode and its switch, n samples with a selection),
// embeddings and the model list as OpenAI's HTTP API has them, request and response as JSON text, without
// HTTP: `kvlens serve` puts it on the wire, the Python bindings call it directly. Single-answer completions
// of concurrent callers are decoded together (continuous batching); at most `parallel` requests compute at
// once, the others wait their turn in arrival order. Every function may be called from any thread.

struct kvlens_service;
struct kvlens_chat_request;  // a parsed, validated chat completion request
struct kvlens_admission;     // a place in the service's line of requests

struct kvlens_service_params {
    std::string model_id;  // the "model" of every response and of the model list; empty: the file's stem
    // Each request's session: n_ctx is the most one request may use, prompt + answer (0: min(the training
    // context, 4096)); n_seq_max is the service's to choose. The chat template, KV-CoE configuration,
    // calibration (adds p_correct) and router (enables "think": "auto") apply to every request.
    kvlens_session_params session;
    int parallel;            // requests computed at once: the slots of the shared batch
    int default_max_tokens;  // a request's answer length when it sets none
    // Limits on a request (each refusal is a 400 naming the parameter): samples ("n"), messages, and the
    // bytes of each stop string.
    int max_n, max_messages, max_stop_bytes;
    // Admitted requests (kvlens_service_admit) that may wait beyond the `parallel` computing ones; one more
    // is refused (503). < 0: no bound.
    int queue;
    // A completion generating this many seconds stops with what it has (finish_reason "length",
    // kvlens.timeout true). 0: never.
    double timeout_s;
};
// The session's defaults but n_ctx 0; parallel 1, 512 tokens, n at most 64, 1024 messages, stop strings of
// 256 bytes, no bound on the queue, no timeout.
kvlens_service_params kvlens_service_default_params();

// A refused or failed request as OpenAI reports it: the HTTP status (400 refused, 503 the line is full, 500
// failed), the error type ("invalid_request_error", "server_error"), the parameter at fault and the code
// (empty for null).
struct kvlens_request_error {
    int http_status = 0;
    std::string message, type, param, code;
};

// KVLENS_ERR_INVALID_ARGUMENT / _FILE / _MODEL_MISMATCH as kvlens_session_open, for a bad limit too.
kvlens_status kvlens_service_open(const kvlens_model* model, const kvlens_service_params& params,
                                  kvlens_service** out);
// Waits for the requests in flight; free every request and admission first.
void kvlens_service_free(kvlens_service* service);

// The model id of the responses; the model list (GET /v1/models) as JSON.
const char* kvlens_service_model_id(const kvlens_service* service);
kvlens_status kvlens_service_models(const kvlens_service* service, std::string* out_json);

// The body of POST /v1/chat/completions (JSON text) parsed and checked. A refusal (malformed JSON or field,
// a limit exceeded) is KVLENS_ERR_INVALID_ARGUMENT with `err` filled (400, naming the parameter).
kvlens_status kvlens_service_parse_chat(const kvlens_service* service, const std::string& body,
                                        kvlens_chat_request** out, kvlens_request_error* err);
bool kvlens_chat_request_stream(const kvlens_chat_request* request);  // "stream": true
void kvlens_chat_request_free(kvlens_chat_request* request);

// A chat.completion.chunk (JSON text); return false to stop (the client went away).
using kvlens_chunk_callback = std::function<bool(const std::string& chunk_json)>;
// Runs a parsed request; the chat.completion response (JSON text) in `out`. With on_chunk, each delta is also
// sent as a chunk (and the usage chunk when the request asks); `out` is empty when on_chunk stopped it. A
// failure: KVLENS_ERR_INVALID_ARGUMENT (400: e.g. the prompt does not fit), _RUNTIME (500, decoding failed),
// _INTERNAL (500, a bug), with `err` filled.
kvlens_status kvlens_service_chat(const kvlens_service* service, const kvlens_chat_request* request,
                                  const kvlens_chunk_callback& on_chunk, std::string* out,
                                  kvlens_request_error* err);
// The body of POST /v1/embeddings (JSON text) -> the list response (JSON text); refusals as parse_chat.
kvlens_status kvlens_service_embeddings(const kvlens_service* service, const std::string& body,
                                        std::string* out, kvlens_request_error* err);

// A place in the line of requests computing or waiting, held until kvlens_admission_free. KVLENS_ERR_BUSY
// (503, code "overloaded") when `parallel` compute and `queue` more wait already. Chat and embeddings wait
// their turn with or without one; an HTTP server takes one first so that a full line refuses at once.
kvlens_status kvlens_service_admit(const kvlens_service* service, kvlens_admission** out,
                                   kvlens_request_error* err);
void kvlens_admission_free(kvlens_admission* admission);
// The most requests admitted at once (parallel + queue); 0 when it never refuses.
int kvlens_service_max_admitted(const kvlens_service* service);

// From now + grace_s on, every running completion stops after its current token with what it has
// (finish_reason "length", kvlens.stop "shutdown"). Lock-free and allocation-free: safe in a signal handler.
void kvlens_service_shutdown(const kvlens_service* service, double grace_s) noexcept;

// ---- RAII ownership (optional)
// -----------------------------------------------------------------------------

struct kvlens_model_deleter {
    void operator()(kvlens_model* m) const { kvlens_model_free(m); }
};
struct kvlens_session_deleter {
    void operator()(kvlens_session* s) const { kvlens_session_free(s); }
};
struct kvlens_service_deleter {
    void operator()(kvlens_service* s) const { kvlens_service_free(s); }
};
struct kvlens_chat_request_deleter {
    void operator()(kvlens_chat_request* r) const { kvlens_chat_request_free(r); }
};
struct kvlens_admission_deleter {
    void operator()(kvlens_admission* a) const { kvlens_admission_free(a); }
};
using kvlens_model_ptr = std::unique_ptr<kvlens_model, kvlens_model_deleter>;
using kvlens_session_ptr = std::unique_ptr<kvlens_session, kvlens_session_deleter>;
using kvlens_service_ptr = std::unique_ptr<kvlens_service, kvlens_service_deleter>;
using kvlens_chat_request_ptr = std::unique_ptr<kvlens_chat_request, kvlens_chat_request_deleter>;
using kvlens_admission_ptr = std::unique_ptr<kvlens_admission, kvlens_admission_deleter>;
