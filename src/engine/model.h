// Engine: a GGUF model and a decoding session on llama.cpp.
//
// Ownership is explicit: a Model owns the llama_model, a Session owns one llama_context (with its KV cache,
// several sequences) and the KvCapture hub that reads K/V out of the graph. A Session borrows its Model,
// which must outlive it. Errors are thrown as kvlens::Error.
#pragma once

#include <llama.h>

#include <memory>
#include <string>
#include <vector>

#include "capture/kv_capture.h"

namespace kvlens {

// Route llama.cpp/ggml logging: quiet (errors only, the default) or verbose.
void set_verbose(bool verbose);

struct ModelParams {
    std::string path;
    int n_gpu_layers = -1;  // -1: all layers on the GPU when one is available
    // Keep the weights as the file has them (no repacking for batched kernels: those compute a row
    // differently when other rows share its matmul). Required by SessionParams::batch_invariant.
    bool batch_invariant = false;
};

// Facts about a model the capture and the methods need.
struct ModelInfo {
    std::string arch;           // general.architecture
    std::string name;           // general.name
    std::string chat_template;  // tokenizer.chat_template, may be empty
    int n_layer = 0;
    int n_embd = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;  // n_embd_k_gqa / n_head_kv
    int n_ctx_train = 0;
    int n_vocab = 0;
    int kv_width() const { return n_head_kv * head_dim; }  // floats in one layer's K (or V) row
};

class Model {
public:
    // Validates the file first (exists, GGUF magic, header and tensor data within the file) so that a bad
    // file gives a one-line error instead of a crash in the loader.
    explicit Model(const ModelParams& params);
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    const llama_model* get() const { return model_; }
    const llama_vocab* vocab() const { return vocab_; }
    const ModelInfo& info() const { return info_; }
    const std::string& path() const { return path_; }
    bool batch_invariant() const { return batch_invariant_; }

    // Text -> tokens. add_special: BOS etc. as the model wants; parse_special: "<|im_start|>" -> one token.
    std::vector<llama_token> tokenize(const std::string& text, bool add_special,
                                      bool parse_special = true) const;
    std::string token_to_piece(llama_token t, bool render_special = false) const;
    std::string detokenize(const std::vector<llama_token>& tokens, bool render_special = false) const;
    bool is_eog(llama_token t) const;

private:
    std::string path_;
    bool batch_invariant_ = false;
    llama_model* model_ = nullptr;
    const llama_vocab* vocab_ = nullptr;
    ModelInfo info_;
};

// Checks that `path` is a readable, complete GGUF file; throws Error naming the file and the problem.
void validate_gguf_file(const std::string& path);

// Token ids from a comma-separated list ("1,2,3", as `kvlens dump --tokens` takes them), each in
// [0, n_vocab); throws Error naming the first bad item.
std::vector<llama_token> parse_token_ids(const std::string& list, int n_vocab);

enum class FlashAttn { Auto, On, Off };

struct SessionParams {
    int n_ctx = 4096;   // tokens of KV cache shared by all sequences
    int n_batch = 512;  // max tokens per decode call (also the micro-batch size)
    int n_seq_max = 1;  // sequences that can live in the cache at once
    int n_threads = 0;  // 0: all hardware threads
    FlashAttn flash_attn = FlashAttn::Auto;
    CaptureSource capture_source = CaptureSource::Cache;  // where captured K/V come from (kv_capture.h)
    // Every sequence's logits bit-identical whichever sequences share its decode calls (batch_invariance.h).
    // Needs a model loaded with ModelParams::batch_invariant and flash attention (forced on).
    bool batch_invariant = false;
    // false: no eval callback in llama.cpp's graph at all (plain generation, ~1% faster decoding, measured
    // in docs/results/bench); subscribing an observer (scores, features, embeddings, routing) then throws.
    bool capture = true;
};

// One token of a batch: which sequence, at which position, and whether its logits are wanted.
struct BatchToken {
    llama_token token;
    llama_pos pos;
    llama_seq_id seq;
    bool logits;
};

class Session {
public:
    Session(const Model& model, const SessionParams& params);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    const Model& model() const { return model_; }
    llama_context* ctx() { return ctx_; }
    KvCapture& capture() { return *capture_; }
    int n_ctx() const;
    int n_batch() const { return n_batch_; }
    int n_seq_max() const { return params_.n_seq_max; }

    // Decodes tokens (any mix of sequences), splitting into chunks of n_batch. With keep_logits, the logits
    // of every token with `logits` set are kept and can be read with logits(i), i = index into `tokens`,
    // until the next decode. Throws Error when the cache is full or decode fails.
    void decode(const std::vector<BatchToken>& tokens, bool keep_logits = true);
    const float* logits(int i) const;

    // Number of llama_decode calls made so far (tests use it to prove prefixes are not recomputed), and the
    // wall-clock seconds spent inside them (benchmarks: what the loop around them costs).
    int64_t n_decode_calls() const { return n_decode_calls_; }
    double decode_seconds() const { return decode_seconds_; }

    // KV-cache sequence management (llama_memory_*).
    void clear();
    void seq_rm(llama_seq_id seq, llama_pos p0 = -1, llama_pos p1 = -1);
    void seq_cp(llama_seq_id src, llama_seq_id dst, llama_pos p0 = -1, llama_pos p1 = -1);
    llama_pos seq_pos_max(llama_seq_id seq) const;

private:
    const Model& model_;
    SessionParams params_;
    int n_batch_ = 0;
    llama_context* ctx_ = nullptr;
    std::unique_ptr<KvCapture> capture_;
    int64_t n_decode_calls_ = 0;
    double decode_seconds_ = 0;
    llama_batch batch_{};             // n_batch tokens, one sequence id each: reused by every decode()
    std::vector<float> logits_;       // kept rows, n_vocab each
    std::vector<int32_t> logit_row_;  // token index in the last decode() -> row in logits_, or -1
};

}  // namespace kvlens
