#include "engine/model.h"

#include <gguf.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "engine/batch_invariance.h"
#include "util/error.h"

namespace kvlens {

// ---- logging ------------------------------------------------------------------------------------------
// llama.cpp logs a lot; by default we keep only the last error line, to put into our own one-line errors.

static bool g_verbose = false;
static std::mutex g_log_mutex;
static std::string g_last_llama_error;

static void log_callback(ggml_log_level level, const char* text, void*) {
    if (g_verbose) {
        fputs(text, stderr);
        return;
    }
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_last_llama_error = text;
        while (!g_last_llama_error.empty() &&
               (g_last_llama_error.back() == '\n' || g_last_llama_error.back() == ' '))
            g_last_llama_error.pop_back();
    }
}

static std::string take_last_llama_error() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string s;
    s.swap(g_last_llama_error);
    return s;
}

static void init_backend() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_callback, nullptr);
        llama_backend_init();
    });
}

void set_verbose(bool verbose) {
    g_verbose = verbose;
    init_backend();
}

// ---- model file validation ---------------------------------------------------------------------------

void validate_gguf_file(const std::string& path) {
    namespace fs = std::filesystem;
    const std::string what = "model '" + path + "'";
    std::error_code ec;
    if (!fs::exists(path, ec)) throw Error(what + ": file not found");
    if (fs::is_directory(path, ec)) throw Error(what + ": is a directory, not a GGUF file");
    const uint64_t size = fs::file_size(path, ec);
    if (ec) throw Error(what + ": cannot read the file size: " + ec.message());

    char magic[4] = {0, 0, 0, 0};
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(what + ": cannot open the file");
    f.read(magic, 4);
    if (f.gcount() < 4 || memcmp(magic, "GGUF", 4) != 0) throw Error(what + ": not a GGUF file (bad magic)");

    init_backend();
    gguf_init_params gp = {/*no_alloc=*/true, /*ctx=*/nullptr};
    gguf_context* g = gguf_init_from_file(path.c_str(), gp);
    if (g == nullptr) {
        const std::string why = take_last_llama_error();
        throw Error(what + ": corrupt or truncated GGUF header" + (why.empty() ? "" : " (" + why + ")"));
    }
    // Tensor data must lie inside the file: a truncated download fails here instead of in the loader.
    uint64_t need = gguf_get_data_offset(g);
    for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
        need = std::max<uint64_t>(
            need, gguf_get_data_offset(g) + gguf_get_tensor_offset(g, i) + gguf_get_tensor_size(g, i));
    }
    gguf_free(g);
    if (need > size) {
        throw Error(what + ": file is truncated (tensor data needs " + std::to_string(need) +
                    " bytes, file has " + std::to_string(size) + ")");
    }
}

std::vector<llama_token> parse_token_ids(const std::string& list, int n_vocab) {
    std::vector<llama_token> ids;
    std::stringstream ss(list);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t used = 0;
        long v = -1;
        try {
            v = std::stol(item, &used);
        } catch (...) {
            used = 0;
        }
        if (used == 0 || used != item.size()) throw Error("--tokens: '" + item + "' is not a token id");
        if (v < 0 || v >= n_vocab)
            throw Error("--tokens: id " + item + " out of range for a vocabulary of " +
                        std::to_string(n_vocab));
        ids.push_back((llama_token)v);
    }
    if (ids.empty()) throw Error("--tokens: no token ids");
    return ids;
}

// ---- Model ---------------------------------------------------------------------------------------------

static std::string meta_str(const llama_model* m, const char* key) {
    char buf[256];
    const int n = llama_model_meta_val_str(m, key, buf, sizeof(buf));
    return n < 0 ? std::string() : std::string(buf);
}

Model::Model(const ModelParams& params) : path_(params.path), batch_invariant_(params.batch_invariant) {
    validate_gguf_file(path_);
    if (params.batch_invariant) check_batch_invariant_weights(path_);
    init_backend();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = params.n_gpu_layers;         // negative: all layers
    mp.use_extra_bufts = !params.batch_invariant;  // the extra buffer types are ggml-cpu's weight repacking
    model_ = llama_model_load_from_file(path_.c_str(), mp);
    if (model_ == nullptr) {
        const std::string why = take_last_llama_error();
        throw Error("model '" + path_ + "': llama.cpp could not load it" + (why.empty() ? "" : ": " + why));
    }
    vocab_ = llama_model_get_vocab(model_);

    info_.arch = meta_str(model_, "general.architecture");
    info_.name = meta_str(model_, "general.name");
    const char* tmpl = llama_model_chat_template(model_, nullptr);
    info_.chat_template = tmpl ? tmpl : "";
    info_.n_layer = llama_model_n_layer(model_);
    info_.n_embd = llama_model_n_embd(model_);
    info_.n_head = llama_model_n_head(model_);
    info_.n_head_kv = llama_model_n_head_kv(model_);
    info_.n_ctx_train = llama_model_n_ctx_train(model_);
    info_.n_vocab = llama_vocab_n_tokens(vocab_);
    // K/V head size: key_length when the GGUF states it, else n_embd / n_head.
    const std::string key_len = meta_str(model_, (info_.arch + ".attention.key_length").c_str());
    info_.head_dim = key_len.empty() ? info_.n_embd / std::max(1, info_.n_head) : std::stoi(key_len);
}

Model::~Model() {
    if (model_) llama_model_free(model_);
}

std::vector<llama_token> Model::tokenize(const std::string& text, bool add_special,
                                         bool parse_special) const {
    std::vector<llama_token> out(text.size() + 8);
    int n = llama_tokenize(vocab_, text.data(), (int32_t)text.size(), out.data(), (int32_t)out.size(),
                           add_special, parse_special);
    if (n < 0) {
        out.resize(-n);
        n = llama_tokenize(vocab_, text.data(), (int32_t)text.size(), out.data(), (int32_t)out.size(),
                           add_special, parse_special);
    }
    if (n < 0) throw Error("text: tokenization failed");
    out.resize(n);
    return out;
}

std::string Model::token_to_piece(llama_token t, bool render_special) const {
    char buf[256];
    int n = llama_token_to_piece(vocab_, t, buf, sizeof(buf), 0, render_special);
    if (n >= 0) return std::string(buf, n);
    std::string s(-n, '\0');
    n = llama_token_to_piece(vocab_, t, s.data(), (int32_t)s.size(), 0, render_special);
    return n < 0 ? std::string() : s;
}

std::string Model::detokenize(const std::vector<llama_token>& tokens, bool render_special) const {
    std::string s;
    for (llama_token t : tokens) s += token_to_piece(t, render_special);
    return s;
}

bool Model::is_eog(llama_token t) const {
    return llama_vocab_is_eog(vocab_, t);
}

// ---- Session -------------------------------------------------------------------------------------------

Session::Session(const Model& model, const SessionParams& params) : model_(model), params_(params) {
    if (params.n_ctx < 8) throw Error("n_ctx: " + std::to_string(params.n_ctx) + " is too small (minimum 8)");
    if (params.n_batch < 1) throw Error("n_batch: must be >= 1");
    const int max_seq = 256;  // llama.cpp's LLAMA_MAX_SEQ (not in the public header)
    if (params.n_seq_max < 1 || params.n_seq_max > max_seq)
        throw Error("n_seq_max: " + std::to_string(params.n_seq_max) + " out of range 1.." +
                    std::to_string(max_seq));
    if (params.batch_invariant && !model.batch_invariant())
        throw Error("batch_invariant: model '" + model.path() +
                    "' was loaded without it (its weights are repacked for batched kernels); load it with "
                    "batch_invariant too");
    if (params.batch_invariant && params.flash_attn == FlashAttn::Off)
        throw Error("batch_invariant: needs flash attention (flash_attn off was asked for)");
    capture_ = std::make_unique<KvCapture>(model.info().n_layer, params.capture_source);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = params.n_ctx;
    n_batch_ = std::min(params.n_batch, params.n_ctx);
    cp.n_batch = n_batch_;
    cp.n_ubatch = n_batch_;  // one micro-batch per decode call: rows arrive in batch order
    cp.n_seq_max = params.n_seq_max;
    // A unified cache makes llama.cpp split batches in order (split_simple), which the capture relies on.
    cp.kv_unified = true;
    const int n_threads =
        params.n_threads > 0 ? params.n_threads : (int)std::max(1u, std::thread::hardware_concurrency());
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    // Flash attention skips the cells masked for a row (other sequences' cells), softmax does not.
    cp.flash_attn_type = params.flash_attn == FlashAttn::On || params.batch_invariant
                             ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                         : params.flash_attn == FlashAttn::Off ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                               : LLAMA_FLASH_ATTN_TYPE_AUTO;
    // Even asking the callback about every node, wanting none, costs ~1% of decode: install it only when
    // something may be captured.
    if (params.capture) {
        cp.cb_eval = &KvCapture::eval_callback;
        cp.cb_eval_user_data = capture_.get();
    } else {
        capture_->refuse_observers();
    }
    cp.no_perf = true;
    ctx_ = llama_init_from_model(const_cast<llama_model*>(model.get()), cp);
    if (ctx_ == nullptr) {
        const std::string why = take_last_llama_error();
        throw Error("model '" + model.path() + "': could not create a context of " +
                    std::to_string(params.n_ctx) + " tokens" + (why.empty() ? "" : ": " + why));
    }
    if (params.batch_invariant) {
        try {
            use_row_independent_kernels(ctx_);
        } catch (...) {
            llama_free(ctx_);
            throw;
        }
    }
    batch_ = llama_batch_init(n_batch_, 0, 1);
}

Session::~Session() {
    if (batch_.token) llama_batch_free(batch_);
    if (ctx_) llama_free(ctx_);
}

int Session::n_ctx() const {
    return (int)llama_n_ctx(ctx_);
}

void Session::decode(const std::vector<BatchToken>& tokens, bool keep_logits) {
    const int n_vocab = model_.info().n_vocab;
    logits_.clear();
    logit_row_.assign(tokens.size(), -1);
    llama_batch& batch = batch_;
    for (size_t begin = 0; begin < tokens.size(); begin += n_batch_) {
        const size_t end = std::min(tokens.size(), begin + (size_t)n_batch_);
        batch.n_tokens = 0;
        for (size_t i = begin; i < end; ++i) {
            const BatchToken& bt = tokens[i];
            const int j = batch.n_tokens++;
            batch.token[j] = bt.token;
            batch.pos[j] = bt.pos;
            batch.n_seq_id[j] = 1;
            batch.seq_id[j][0] = bt.seq;
            batch.logits[j] = bt.logits;
        }
        capture_->begin_batch(&batch);
        const auto t0 = std::chrono::steady_clock::now();
        const int rc = llama_decode(ctx_, batch);
        decode_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        capture_->begin_batch(nullptr);
        ++n_decode_calls_;
        if (rc != 0) {
            const std::string why = take_last_llama_error();
            if (rc == 1)
                throw Error("decode: the KV cache is full (n_ctx = " + std::to_string(n_ctx()) +
                            " tokens for all sequences)");
            throw Error("decode: llama_decode failed with code " + std::to_string(rc) +
                        (why.empty() ? "" : ": " + why));
        }
        if (!keep_logits) continue;
        for (size_t i = begin; i < end; ++i) {
            if (!tokens[i].logits) continue;
            const float* l = llama_get_logits_ith(ctx_, (int32_t)(i - begin));
            logit_row_[i] = (int32_t)(logits_.size() / n_vocab);
            logits_.insert(logits_.end(), l, l + n_vocab);
        }
    }
}

const float* Session::logits(int i) const {
    if (i < 0 || (size_t)i >= logit_row_.size() || logit_row_[i] < 0)
        throw Error("logits: token " + std::to_string(i) + " of the last decode has no kept logits");
    return logits_.data() + (size_t)logit_row_[i] * model_.info().n_vocab;
}

void Session::clear() {
    llama_memory_clear(llama_get_memory(ctx_), true);
}

void Session::seq_rm(llama_seq_id seq, llama_pos p0, llama_pos p1) {
    llama_memory_seq_rm(llama_get_memory(ctx_), seq, p0, p1);
}

void Session::seq_cp(llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1) {
    llama_memory_seq_cp(llama_get_memory(ctx_), src, dst, p0, p1);
}

llama_pos Session::seq_pos_max(llama_seq_id seq) const {
    return llama_memory_seq_pos_max(llama_get_memory(ctx_), seq);
}

}  // namespace kvlens
