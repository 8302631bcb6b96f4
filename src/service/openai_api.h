// The OpenAI-compatible API (chat completions, embeddings, models) as functions from request JSON to response
// JSON, without HTTP. Part of the library below the public API (kvlens_service_* in include/kvlens/kvlens.h),
// so that its front ends, the HTTP server (src/server) and the Python bindings, share it through that API.
// kvlens adds to each chat completion what the KV cache says about it: the confidence scores of KV-CoE (and
// P(correct) with a calibration), the thinking mode chosen by the router and where it switched, every token
// generated.
//
// Thread-safe: the Model is shared and at most `parallel` requests compute at once; the others wait their
// turn in arrival order (at most `queue` of them when admitted with admit()). Single-answer completions
// (n = 1, think not auto) are decoded together in one Session with a sequence per slot (continuous batching:
// they join between decode steps and leave when done); n > 1, think auto and embeddings get a Session each.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "methods/calibration.h"
#include "methods/coe.h"
#include "methods/router.h"
#include "util/error.h"

namespace kvlens {

struct ApiParams {
    std::string model_id;  // the "model" of every response and of /v1/models; empty: the file's stem
    // Each request's session: n_ctx is the most one request may use (prompt + answer; 0: min(n_ctx_train,
    // 4096)), a request gets what it needs up to that; threads and flash attention as given.
    SessionParams session = {0, 512, 1, 0, FlashAttn::Auto};
    int parallel = 1;  // requests computed at once: the slots of the shared batch
    int default_max_tokens = 512;
    std::string chat_template = "auto";
    std::string router_path;       // enables "think": "auto"
    std::string calibration_path;  // kvlens calibrate's file: adds P(correct); refused for another model
    TokenCoeSpec token_coe;        // the configuration of kv_coe_*
    // Limits on a request (each refusal is a 400 naming the parameter).
    int max_n = 64;               // "n": at most this many samples (kvlens serve: --max-n, 8)
    int max_messages = 1024;      // "messages": at most this many
    size_t max_stop_bytes = 256;  // each "stop" string at most this long (OpenAI allows up to 4 of them)
    // Requests admitted (admit()) beyond the `parallel` computing ones that may wait their turn; one more is
    // refused with a 503. < 0: no bound (what chat() and embeddings() alone do: they wait, never refuse).
    int queue = -1;
    // A single-answer chat completion that has been generating this many seconds stops after its current
    // token with what it has (finish_reason "length", kvlens.timeout = true). 0: no limit.
    double timeout_s = 0;
};

// A request the API refuses: HTTP status, the OpenAI error type and the offending parameter.
class ApiError : public Error {
public:
    ApiError(int status_, const std::string& param_, const std::string& message,
             const std::string& type_ = "invalid_request_error", const std::string& code_ = "")
        : Error(message), status(status_), param(param_), type(type_), code(code_) {}
    int status;
    std::string param, type, code;  // code: empty for null
};

// {"error": {"message", "type", "param", "code"}} as OpenAI sends it (empty param / code: null).
nlohmann::json api_error_json(const std::string& message, const std::string& type, const std::string& param,
                              const std::string& code = "");

// A parsed, validated chat completion request.
struct ChatRequest {
    std::vector<ChatMessage> messages;
    int max_tokens = 0;  // 0: the server's default
    SamplingParams sampling;
    std::vector<std::string> stop;
    bool stream = false, include_usage = false;
    std::string think = "default";  // default | on | off | auto
    // n > 1: n samples decoded together (shared prompt), one chosen by "kvlens": {"select", "score",
    // "matcher", "abstain_below"} (methods/selection.h): every sample is a choice, the pick is reported.
    int n = 1;
    std::string select = "majority", select_score, matcher = "last_number";
    double abstain_below = -1;  // < 0: never abstain
    // Streaming KV-CoE: every this many generated tokens (0: never) a chunk carries the scores so far
    // ("kvlens": {"scores_every": N}); the scores at k tokens are those of the answer cut at k tokens.
    int scores_every = 0;
};

class Api {
public:
    // Loads the router and calibration named in params; throws Error naming a bad file or a router trained
    // for another model.
    Api(const Model& model, const ApiParams& params);
    ~Api();

    const std::string& model_id() const { return model_id_; }
    nlohmann::json models() const;

    // Throws ApiError naming the parameter (400) for every malformed or unsupported field.
    ChatRequest parse_chat(const nlohmann::json& body) const;
    // Runs it. With on_chunk, each delta is also sent as a chat.completion.chunk (return false to stop:
    // the client went away) and the usage chunk when asked; the full response is returned either way.
    nlohmann::json chat(const ChatRequest& req,
                        const std::function<bool(const nlohmann::json&)>& on_chunk = {}) const;

    nlohmann::json embeddings(const nlohmann::json& body) const;

    // Admits a request to the line of those computing or waiting, for as long as the returned handle lives;
    // throws ApiError 503 (type server_error, code overloaded) when `parallel` compute and `queue` more
    // already wait. The HTTP server takes one before chat() / embeddings() so that a full line refuses at
    // once instead of growing; chat() and embeddings() wait their turn either way.
    std::shared_ptr<void> admit() const;
    // SIGTERM: from now + grace_s on, every running completion stops after its current token with what it has
    // (finish_reason "length", kvlens.stop "shutdown"), so the server drains within a bound. Lock-free: safe
    // in a signal handler.
    void shutdown(double grace_s) const noexcept;
    bool shutting_down() const noexcept;  // past that point

    // The most requests admit() lets in at once (parallel + queue); 0 when it never refuses.
    int max_admitted() const { return params_.queue >= 0 ? params_.parallel + params_.queue : 0; }

private:
    // At most params.parallel holders at once, served in arrival order.
    class Slot {
    public:
        explicit Slot(const Api& api);
        ~Slot();

    private:
        const Api& api_;
    };
    nlohmann::json chat_n(const ChatRequest& req, const std::vector<llama_token>& prompt,
                          bool prompt_opens_think, int max_tokens, const nlohmann::json& base) const;
    int context_for(int n_prompt, int max_tokens) const;

    const Model& model_;
    ApiParams params_;
    std::string model_id_;
    ChatTemplate tmpl_ = ChatTemplate::Auto;
    int n_ctx_ = 0;
    std::unique_ptr<RouterFile> router_;
    std::vector<Calibration> calibration_;
    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    mutable int busy_ = 0, admitted_ = 0;
    mutable uint64_t next_ticket_ = 0, serving_ = 0;
    mutable std::atomic<uint64_t> next_id_{0};
    mutable std::atomic<int64_t> shutdown_at_ns_{INT64_MAX};  // steady clock; INT64_MAX: running
    // Single-answer completions decode here, together (continuous batching); last: it stops first.
    class Scheduler;
    std::unique_ptr<Scheduler> sched_;
};

// An answer's thinking and its answer proper: the text up to "</think>" is reasoning (without the "<think>"
// tag and the whitespace after it), the text after it (left-trimmed) the content. With no close tag yet the
// text is all reasoning when the output or the prompt (prompt_opens_think) opened a block, and nothing while
// the output is a proper prefix of "<think>". An answer that opened no block is all content, a stray
// "</think>" included.
void split_reasoning(const std::string& text, bool prompt_opens_think, std::string& reasoning,
                     std::string& content);

// Base64 (RFC 4648) of the bytes of little-endian float32 values, as OpenAI's encoding_format "base64".
std::string floats_base64(const std::vector<float>& v);

}  // namespace kvlens
