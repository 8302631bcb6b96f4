#include "service/openai_api.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <random>
#include <sstream>
#include <thread>

#include "engine/batcher.h"
#include "eval/matchers.h"
#include "methods/coe.h"
#include "methods/embed.h"
#include "methods/fast_slow.h"
#include "methods/sampling.h"
#include "methods/selection.h"

namespace kvlens {

using nlohmann::json;

json api_error_json(const std::string& message, const std::string& type, const std::string& param,
                    const std::string& code) {
    return {{"error",
             {{"message", message},
              {"type", type},
              {"param", param.empty() ? json(nullptr) : json(param)},
              {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

std::string floats_base64(const std::vector<float>& v) {
    static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::vector<unsigned char> b(v.size() * 4);
    for (size_t i = 0; i < v.size(); ++i) {
        uint32_t u;
        std::memcpy(&u, &v[i], 4);
        for (int j = 0; j < 4; ++j) b[4 * i + j] = (unsigned char)(u >> (8 * j));  // little-endian
    }
    std::string out;
    out.reserve((b.size() + 2) / 3 * 4);
    for (size_t i = 0; i < b.size(); i += 3) {
        const uint32_t n = (uint32_t)b[i] << 16 | (i + 1 < b.size() ? (uint32_t)b[i + 1] << 8 : 0) |
                           (i + 2 < b.size() ? (uint32_t)b[i + 2] : 0);
        out += k[n >> 18 & 63];
        out += k[n >> 12 & 63];
        out += i + 1 < b.size() ? k[n >> 6 & 63] : '=';
        out += i + 2 < b.size() ? k[n & 63] : '=';
    }
    return out;
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& what) {
    throw ApiError(400, param, param + ": " + what);
}

// An optional field: absent and null both mean "not given".
const json* field(const json& body, const char* key) {
    const auto it = body.find(key);
    return it == body.end() || it->is_null() ? nullptr : &*it;
}

// `in` names the object the field is in ("kvlens" for kvlens.scores_every), empty for the body.
double number_in(const json& body, const char* key, double lo, double hi, double def,
                 const std::string& in = "") {
    const json* v = field(body, key);
    if (!v) return def;
    const std::string param = in.empty() ? key : in + "." + key;
    if (!v->is_number()) bad(param, "expected a number");
    const double x = v->get<double>();
    if (!(x >= lo && x <= hi)) {
        std::ostringstream m;
        m << "must be in [" << lo << ", " << hi << "]";
        bad(param, m.str());
    }
    return x;
}

int64_t integer_in(const json& body, const char* key, int64_t lo, int64_t hi, int64_t def,
                   const std::string& in = "") {
    const json* v = field(body, key);
    if (!v) return def;
    const std::string param = in.empty() ? key : in + "." + key;
    if (!v->is_number_integer()) bad(param, "expected an integer");
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) bad(param, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
}

bool boolean(const json& body, const char* key, bool def) {
    const json* v = field(body, key);
    if (!v) return def;
    if (!v->is_boolean()) bad(key, "expected true or false");
    return v->get<bool>();
}

// OpenAI message content: a string, or an array of parts of which only text parts are supported.
std::string message_content(const json& c, const std::string& param) {
    if (c.is_null()) return "";
    if (c.is_string()) return c.get<std::string>();
    if (!c.is_array()) bad(param, "expected a string or an array of text parts");
    std::string out;
    for (size_t i = 0; i < c.size(); ++i) {
        const json& p = c[i];
        const std::string pp = param + "[" + std::to_string(i) + "]";
        if (!p.is_object() || p.value("type", json()) != "text" || !p.contains("text") ||
            !p["text"].is_string())
            bad(pp, "only {\"type\": \"text\", \"text\": ...} parts are supported");
        out += p["text"].get<std::string>();
    }
    return out;
}

}  // namespace

void split_reasoning(const std::string& text, bool prompt_opens_think, std::string& reasoning,
                     std::string& content) {
    const size_t close = text.find("</think>");
    const size_t lead = text.find_first_not_of(" \t\r\n");
    const bool opens = lead != std::string::npos && text.compare(lead, 7, "<think>") == 0;
    if (!opens && lead != std::string::npos && text.size() - lead < 7 &&
        std::string("<think>").compare(0, text.size() - lead, text, lead) == 0) {
        reasoning.clear();  // the opening tag is not complete yet
        content.clear();
        return;
    }
    size_t body = opens ? lead + 7 : 0;
    if (opens || prompt_opens_think) {  // reasoning starts at its first visible character
        const size_t first = text.find_first_not_of(" \t\r\n", body);
        body = first == std::string::npos ? text.size() : first;
    }
    if (!opens && !prompt_opens_think) {  // an answer that did not think: a stray close tag is just text
        reasoning.clear();
        content = text;
        return;
    }
    if (close == std::string::npos) {
        if (opens || prompt_opens_think) {
            reasoning = text.substr(body);
            content.clear();
        } else {
            reasoning.clear();
            content = text;
        }
        return;
    }
    reasoning = text.substr(std::min(body, close), close - std::min(body, close));
    const size_t after = text.find_first_not_of(" \t\r\n", close + 8);
    content = after == std::string::npos ? "" : text.substr(after);
}

namespace {

// Bytes at the end of s that may be the start of an incomplete UTF-8 sequence.
size_t utf8_tail(const std::string& s) {
    for (size_t k = 1; k <= std::min<size_t>(3, s.size()); ++k) {
        const unsigned char c = (unsigned char)s[s.size() - k];
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
        const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > k ? k : 0;
    }
    return 0;
}

// Scores by name, with P(correct) for each calibrated one; non-finite values as null (JSON has no NaN).
json scores_json(std::map<std::string, double> scores, const std::vector<Calibration>& cals) {
    for (const auto& [k, v] : calibrated_scores(scores, cals)) scores[k] = v;
    json j = json::object();
    for (const auto& [k, v] : scores) j[k] = std::isfinite(v) ? json(v) : json(nullptr);
    return j;
}

// Where the earliest of the stop strings starts in text; npos when none occurs.
size_t find_stop(const std::string& text, const std::vector<std::string>& stops) {
    size_t first = std::string::npos;
    for (const std::string& s : stops) first = std::min(first, text.find(s));
    return first;
}

// Output tokens up to the end of the think block (which the prompt or the output opened) and after it.
std::pair<int, int> think_split(const Model& model, const std::vector<llama_token>& output,
                                bool prompt_opens) {
    std::string text;
    bool open = prompt_opens;
    for (size_t i = 0; i < output.size(); ++i) {
        text += model.detokenize({output[i]}, true);
        if (text.find("<think>") != std::string::npos) open = true;
        if (open && text.find("</think>") != std::string::npos)
            return {(int)i + 1, (int)(output.size() - i - 1)};
    }
    return open ? std::make_pair((int)output.size(), 0) : std::make_pair(0, (int)output.size());
}

// DeepSeek-R1's and Qwen3's forced-thinking prompts end inside an open think block.
bool ends_in_think_block(const std::string& prompt) {
    const size_t open_at = prompt.rfind("<think>"), close_at = prompt.rfind("</think>");
    return open_at != std::string::npos && (close_at == std::string::npos || close_at < open_at);
}

const char* finish_reason(StopReason s, bool stop_string) {
    if (stop_string || s == StopReason::EndOfTurn) return "stop";
    return "length";
}

// Length of the longest proper prefix of any pattern that s ends with: text that may still become one.
size_t partial_suffix(const std::string& s, const std::vector<std::string>& patterns) {
    size_t best = 0;
    for (const std::string& p : patterns)
        for (size_t k = std::min(p.size() - 1, s.size()); k > best; --k)
            if (s.compare(s.size() - k, k, p, 0, k) == 0) {
                best = k;
                break;
            }
    return best;
}

// Sends the growing text as deltas: reasoning_content while thinking, content after. What may still turn
// out to be a stop string or the close tag, and incomplete UTF-8, is held back until known.
class DeltaStream {
public:
    DeltaStream(const std::function<bool(const json&)>& send, json base, bool prompt_opens_think,
                const std::vector<std::string>& stop)
        : send_(send), base_(std::move(base)), opens_(prompt_opens_think), stop_(stop), stop_close_(stop) {
        stop_close_.push_back("</think>");
    }

    bool update(const std::string& text, bool final) {
        if (!send_) return true;
        std::string r, c;
        split_reasoning(text, opens_, r, c);
        if (!final) {
            if (c.empty()) r.resize(r.size() - partial_suffix(r, stop_close_));
            c.resize(c.size() - partial_suffix(c, stop_));
            r.resize(r.size() - utf8_tail(r));
            c.resize(c.size() - utf8_tail(c));
        }
        json delta = json::object();
        if (first_) delta["role"] = "assistant";
        if (r.size() > sent_r_.size() && r.compare(0, sent_r_.size(), sent_r_) == 0) {
            delta["reasoning_content"] = r.substr(sent_r_.size());
            sent_r_ = r;
        }
        if (c.size() > sent_c_.size() && c.compare(0, sent_c_.size(), sent_c_) == 0) {
            delta["content"] = c.substr(sent_c_.size());
            sent_c_ = c;
        }
        if (delta.empty() || (first_ && delta.size() == 1)) return true;
        first_ = false;
        return send_(chunk(delta, nullptr));
    }
    json chunk(const json& delta, const char* finish) const {
        json j = base_;
        j["object"] = "chat.completion.chunk";
        j["choices"] = json::array({{{"index", 0},
                                     {"delta", delta},
                                     {"logprobs", nullptr},
                                     {"finish_reason", finish ? json(finish) : json()}}});
        return j;
    }
    bool send(const json& j) const { return !send_ || send_(j); }

private:
    const std::function<bool(const json&)>& send_;
    json base_;
    bool opens_;
    std::vector<std::string> stop_, stop_close_;
    bool first_ = true;
    std::string sent_r_, sent_c_;
};

}  // namespace

// A single-answer request in the shared batch. The request's own thread submits it and waits; the
// scheduler's thread decodes it: its sampler, stop rules and timeout are applied there, token by token, so
// that an answer ends at the same token whatever else is in the batch. Streaming text and scores come back
// as events, which the request's thread sends (a slow client never holds the batch up).
struct BatchJob {
    // Set before submit, then read-only.
    const Model* model = nullptr;
    std::vector<llama_token> prompt;
    int max_tokens = 1;
    SamplingParams sampling;
    std::vector<std::string> stop;
    bool streaming = false;
    int scores_every = 0;
    double timeout_s = 0;
    const Api* api = nullptr;  // its shutdown() cuts the answer short

    // The scheduler's thread only (read by the request's thread once done).
    std::unique_ptr<CoeScorer> scorer;
    std::chrono::steady_clock::time_point started;
    std::string text;  // every sampled token but the last, detokenized
    std::string out_text;
    bool stop_string = false, timed_out = false;

    struct Event {
        std::string text;  // the visible text so far
        int n_generated = 0;
        bool has_scores = false;
        std::map<std::string, double> scores;
    };
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Event> events;  // guarded by mu
    bool done = false;          // guarded by mu
    std::string error;          // guarded by mu; non-empty: failed
    Generation gen;             // once done
    std::map<std::string, double> scores;
    std::atomic<bool> cancel{false};  // the client went away: stop at the next token

    // GenerateParams::on_token for this sequence, in the scheduler's thread.
    bool on_token(const Generation& g) {
        const llama_token last = g.output.back();
        const std::string t = model->is_eog(last) ? text : text + model->token_to_piece(last);
        if (!model->is_eog(last)) text = t;
        const size_t at = find_stop(t, stop);
        if (at != std::string::npos) {
            out_text = t.substr(0, at);
            stop_string = true;
            return false;
        }
        if (streaming) {
            Event e;
            e.text = t;
            e.n_generated = (int)g.output.size();
            if (scores_every > 0 && g.output.size() % scores_every == 0) {
                e.has_scores = true;
                e.scores = scorer->result(g.steps, g.output).named();
            }
            std::lock_guard<std::mutex> lock(mu);
            events.push_back(std::move(e));
            cv.notify_all();
        }
        if (cancel) return false;
        if ((timeout_s > 0 &&
             std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() >=
                 timeout_s) ||
            (api && api->shutting_down()))
            timed_out = true;
        return !timed_out;
    }
    void finish(Generation g) {
        // Scores read, then the observer goes: its sequence id is free for the next request.
        scores = scorer->result(g.steps, g.output).named();
        scorer.reset();
        std::lock_guard<std::mutex> lock(mu);
        gen = std::move(g);
        done = true;
        cv.notify_all();
    }
    void fail(const std::string& why) {
        scorer.reset();
        std::lock_guard<std::mutex> lock(mu);
        error = why.empty() ? "the request failed" : why;
        done = true;
        cv.notify_all();
    }
};

// Continuous batching: one context with a sequence per slot; requests join between decode steps and leave
// (their cells removed) when done. The context is created with the first request.
class Api::Scheduler {
public:
    Scheduler(const Model& model, const SessionParams& sp, const TokenCoeSpec& spec)
        : model_(model), sp_(sp), spec_(spec), thread_([this] { loop(); }) {}
    ~Scheduler() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            quit_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    void submit(const std::shared_ptr<BatchJob>& job) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            pending_.push_back(job);
        }
        cv_.notify_all();
    }

private:
    void loop() {
        std::unique_ptr<Session> session;
        std::unique_ptr<Batcher> batcher;
        // By sequence id; a batch-invariant session keeps its last id for finished sequences' cells.
        std::vector<std::shared_ptr<BatchJob>> live(sp_.n_seq_max - (sp_.batch_invariant ? 1 : 0));
        for (;;) {
            std::vector<std::shared_ptr<BatchJob>> joining;
            {
                std::unique_lock<std::mutex> lock(mu_);
                cv_.wait(lock, [&] { return quit_ || !pending_.empty() || (batcher && !batcher->empty()); });
                if (quit_) break;
                size_t free_ids = 0;
                for (const auto& j : live) free_ids += j ? 0 : 1;
                while (!pending_.empty() && joining.size() < free_ids) {
                    joining.push_back(std::move(pending_.front()));
                    pending_.pop_front();
                }
            }
            std::vector<std::shared_ptr<BatchJob>> deferred;  // batch-invariant: wait for cells, in order
            for (const std::shared_ptr<BatchJob>& job : joining) {
                try {
                    if (job->cancel) throw Error("cancelled");
                    if (!session) {
                        session = std::make_unique<Session>(model_, sp_);
                        batcher = std::make_unique<Batcher>(*session, true, sp_.batch_invariant);
                    }
                    if (!deferred.empty() ||
                        (!batcher->empty() && !batcher->can_join(job->prompt.size(), job->max_tokens))) {
                        deferred.push_back(job);
                        continue;
                    }
                    llama_seq_id seq = 0;
                    while (live[seq]) ++seq;
                    job->scorer = std::make_unique<CoeScorer>(*session, seq, (int)job->prompt.size(), spec_);
                    job->started = std::chrono::steady_clock::now();
                    BatchJob* j = job.get();
                    batcher->join(seq, job->prompt, job->max_tokens,
                                  make_sampler(job->sampling, job->sampling.seed),
                                  [j](const Generation& g) { return j->on_token(g); });
                    live[seq] = job;
                } catch (const std::exception& e) {
                    job->fail(e.what());
                }
            }
            if (!deferred.empty()) {
                std::lock_guard<std::mutex> lock(mu_);
                pending_.insert(pending_.begin(), deferred.begin(), deferred.end());
            }
            if (!batcher || batcher->empty()) continue;
            try {
                for (Generation& g : batcher->step()) {
                    const std::shared_ptr<BatchJob> job = std::move(live[g.seq]);
                    job->finish(std::move(g));
                }
            } catch (const std::exception& e) {  // decoding failed: every sequence was dropped
                for (std::shared_ptr<BatchJob>& j : live)
                    if (j) std::exchange(j, nullptr)->fail(e.what());
            }
        }
        for (std::shared_ptr<BatchJob>& j : live)
            if (j) j->fail("the server is stopping");
        std::lock_guard<std::mutex> lock(mu_);
        for (std::shared_ptr<BatchJob>& j : pending_) j->fail("the server is stopping");
    }

    const Model& model_;
    SessionParams sp_;
    TokenCoeSpec spec_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<BatchJob>> pending_;
    bool quit_ = false;
    std::thread thread_;  // last: starts once the rest exists
};

Api::Api(const Model& model, const ApiParams& params) : model_(model), params_(params) {
    const ModelInfo& mi = model.info();
    model_id_ =
        params.model_id.empty() ? std::filesystem::path(model.path()).stem().string() : params.model_id;
    const ChatTemplate flag = parse_chat_template(params.chat_template);
    tmpl_ = flag == ChatTemplate::Auto ? detect_chat_template(mi.chat_template, mi.arch) : flag;
    n_ctx_ = params.session.n_ctx > 0 ? params.session.n_ctx
                                      : std::min(mi.n_ctx_train > 0 ? mi.n_ctx_train : 4096, 4096);
    if (params.parallel < 1) throw Error("parallel: must be >= 1");
    if (params.default_max_tokens < 1) throw Error("default max tokens: must be >= 1");
    if (params.max_n < 1) throw Error("max n: must be >= 1");
    if (params.max_messages < 1) throw Error("max messages: must be >= 1");
    if (!(params.timeout_s >= 0)) throw Error("timeout: must be >= 0 seconds");
    if (!params.router_path.empty()) {
        router_ = std::make_unique<RouterFile>(load_router(params.router_path));
        if (!has_thinking(tmpl_))
            throw Error(std::string("--router: chat template ") + to_string(tmpl_) + " has no thinking mode");
        check_router_for_model(*router_, mi.arch, mi.n_layer, mi.n_head_kv, mi.head_dim, to_string(tmpl_));
    }
    if (!params.calibration_path.empty()) {
        calibration_.push_back(load_calibration(params.calibration_path));
        check_calibration_model(calibration_[0],
                                calibration_model_of(model.path(), mi.name, mi.arch, mi.n_layer));
    }
    // The shared batch: a sequence per slot, each up to n_ctx_ cells (a request never needs more).
    SessionParams sp = params.session;
    sp.n_ctx = n_ctx_ * params.parallel;
    sp.n_batch = std::min(sp.n_ctx, std::max(1, params.session.n_batch));
    sp.n_seq_max = params.parallel + (sp.batch_invariant ? 1 : 0);  // + the id of retired cells (Batcher)
    sched_ = std::make_unique<Scheduler>(model_, sp, params.token_coe);
}

Api::~Api() = default;

Api::Slot::Slot(const Api& api) : api_(api) {
    std::unique_lock<std::mutex> lock(api.mu_);
    const uint64_t ticket = api.next_ticket_++;
    api.cv_.wait(lock, [&] { return ticket == api.serving_ && api.busy_ < api.params_.parallel; });
    ++api.serving_;
    ++api.busy_;
    api.cv_.notify_all();
}

std::shared_ptr<void> Api::admit() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (params_.queue >= 0 && admitted_ >= params_.parallel + params_.queue)
        throw ApiError(503, "",
                       "server busy: " + std::to_string(params_.parallel) + " requests computing and " +
                           std::to_string(params_.queue) +
                           " waiting, the most it takes (server --parallel, --queue); retry later",
                       "server_error", "overloaded");
    ++admitted_;
    return std::shared_ptr<void>(nullptr, [this](void*) {
        std::lock_guard<std::mutex> l(mu_);
        --admitted_;
    });
}

Api::Slot::~Slot() {
    std::lock_guard<std::mutex> lock(api_.mu_);
    --api_.busy_;
    api_.cv_.notify_all();
}

json Api::models() const {
    const ModelInfo& mi = model_.info();
    return {
        {"object", "list"},
        {"data",
         json::array({{{"id", model_id_},
                       {"object", "model"},
                       {"created", 0},
                       {"owned_by", "kvlens"},
                       {"kvlens",
                        {{"arch", mi.arch},
                         {"n_layer", mi.n_layer},
                         {"kv_width", mi.kv_width()},
                         {"n_ctx", n_ctx_},
                         {"chat_template", to_string(tmpl_)},
                         {"thinking", has_thinking(tmpl_)},
                         {"router", router_ != nullptr},
                         {"calibration", calibration_.empty() ? json() : json(calibration_[0].score)}}}}})}};
}

ChatRequest Api::parse_chat(const json& body) const {
    if (!body.is_object()) bad("body", "expected a JSON object");
    ChatRequest r;
    const json* msgs = field(body, "messages");
    if (!msgs || !msgs->is_array() || msgs->empty())
        bad("messages", "required: a non-empty array of messages");
    if (msgs->size() > (size_t)params_.max_messages)
        bad("messages", std::to_string(msgs->size()) + " messages, more than the " +
                            std::to_string(params_.max_messages) +
                            " the server takes (server --max-messages)");
    for (size_t i = 0; i < msgs->size(); ++i) {
        const json& m = (*msgs)[i];
        const std::string p = "messages[" + std::to_string(i) + "]";
        if (!m.is_object()) bad(p, "expected an object with role and content");
        const json* role = field(m, "role");
        if (!role || !role->is_string()) bad(p + ".role", "required: system, user or assistant");
        std::string rs = role->get<std::string>();
        if (rs == "developer") rs = "system";
        if (rs != "system" && rs != "user" && rs != "assistant")
            bad(p + ".role", "'" + rs + "' is not supported (system, developer, user, assistant)");
        if (!m.contains("content") && rs != "assistant") bad(p + ".content", "required");
        r.messages.push_back({rs, message_content(m.value("content", json()), p + ".content")});
    }
    if (r.messages.back().role == "assistant")
        bad("messages", "the last message must not be the assistant's");
    // A length that can never fit the context is refused; one that fits it but not beside this prompt is cut
    // to what the prompt leaves (finish_reason "length"), as llama-server does.
    for (const char* k : {"max_tokens", "max_completion_tokens"}) {
        const int64_t x = integer_in(body, k, 1, 1 << 24, 0);
        if (x >= n_ctx_)
            bad(k, std::to_string(x) + " tokens do not fit the context of " + std::to_string(n_ctx_) +
                       " tokens (prompt + answer; server --ctx)");
        if (x > 0) r.max_tokens = (int)x;  // max_completion_tokens, the newer name, wins
    }
    r.sampling.temperature = (float)number_in(body, "temperature", 0, 2, 1.0);
    r.sampling.top_p = (float)number_in(body, "top_p", 1e-9, 1, 1.0);
    r.sampling.top_k = (int)integer_in(body, "top_k", 0, 1 << 20, 0);
    if (field(body, "seed")) {
        r.sampling.seed = (uint32_t)integer_in(body, "seed", INT64_MIN / 2, INT64_MAX / 2, 0);
    } else {
        std::random_device rd;
        r.sampling.seed = rd();
    }
    if (const json* n = field(body, "n"); n && n->is_number_integer() && n->get<int64_t>() > params_.max_n)
        bad("n", std::to_string(n->get<int64_t>()) + " samples, more than the " +
                     std::to_string(params_.max_n) + " the server takes (server --max-n)");
    r.n = (int)integer_in(body, "n", 1, params_.max_n, 1);
    if (const json* s = field(body, "stop")) {
        if (s->is_string()) {
            r.stop.push_back(s->get<std::string>());
        } else if (s->is_array() && s->size() <= 4) {
            for (const json& x : *s) {
                if (!x.is_string()) bad("stop", "expected a string or an array of up to 4 strings");
                r.stop.push_back(x.get<std::string>());
            }
        } else {
            bad("stop", "expected a string or an array of up to 4 strings");
        }
        for (const std::string& x : r.stop) {
            if (x.empty()) bad("stop", "empty stop strings are not allowed");
            if (x.size() > params_.max_stop_bytes)
                bad("stop", "a stop string of " + std::to_string(x.size()) + " bytes, longer than the " +
                                std::to_string(params_.max_stop_bytes) + " allowed");
        }
    }
    r.stream = boolean(body, "stream", false);
    if (const json* so = field(body, "stream_options")) {
        if (!so->is_object()) bad("stream_options", "expected an object");
        r.include_usage = boolean(*so, "include_usage", false);
    }
    if (boolean(body, "logprobs", false)) bad("logprobs", "not supported");
    for (const char* k : {"tools", "functions"})
        if (const json* t = field(body, k); t && !(t->is_array() && t->empty())) bad(k, "not supported");
    if (const json* rf = field(body, "response_format"))
        if (!rf->is_object() || rf->value("type", json()) != "text")
            bad("response_format", "only text is supported");
    // Thinking: kvlens's "think", or llama-server's chat_template_kwargs.enable_thinking (true: on, false:
    // off) and reasoning_budget (-1: unlimited, 0: off, N: budget:N); "think" wins when both are given.
    std::string think_param = "think";
    if (const json* kw = field(body, "chat_template_kwargs")) {
        if (!kw->is_object()) bad("chat_template_kwargs", "expected an object");
        if (const json* e = field(*kw, "enable_thinking")) {
            if (!e->is_boolean()) bad("chat_template_kwargs.enable_thinking", "expected true or false");
            r.think = e->get<bool>() ? "on" : "off";
            think_param = "chat_template_kwargs.enable_thinking";
        }
    }
    if (const json* b = field(body, "reasoning_budget")) {
        if (!b->is_number_integer()) bad("reasoning_budget", "expected an integer (-1: unlimited, 0: off)");
        const int64_t n = b->get<int64_t>();
        if (n < -1 || n > (1 << 24))
            bad("reasoning_budget", "must be in [-1, 16777216] (-1: unlimited, 0: off)");
        if (n > 0 && r.think == "off")
            bad("reasoning_budget", "a budget of " + std::to_string(n) +
                                        " tokens conflicts with chat_template_kwargs.enable_thinking false");
        if (n == 0) r.think = "off";
        if (n > 0) r.think = "budget:" + std::to_string(n);
        if (n >= 0) think_param = "reasoning_budget";
    }
    if (const json* t = field(body, "think")) {
        if (!t->is_string()) bad("think", "expected default, on, off, auto, budget:N or deer[:T]");
        r.think = t->get<std::string>();
        think_param = "think";
        if (r.think != "default" && r.think != "on" && r.think != "off" && r.think != "auto") {
            ThinkExitPolicy ex;
            try {
                ex = parse_think_exit(r.think);
            } catch (const Error& e) {
                bad("think", e.what());
            }
            if (ex.kind == ThinkExit::None)
                bad("think", "'" + r.think + "': expected default, on, off, auto, budget:N or deer[:T]");
            r.think = to_string(ex);  // as the response names it: "deer" -> "deer:0.95"
        }
    }
    if (r.think != "default" && !has_thinking(tmpl_))
        bad(think_param,
            std::string("the model's chat template (") + to_string(tmpl_) + ") has no thinking mode");
    if (r.think == "auto" && !router_) bad("think", "auto needs a server started with --router");
    if (const json* k = field(body, "kvlens")) {
        if (!k->is_object()) bad("kvlens", "expected an object");
        if (const json* v = field(*k, "select")) {
            if (!v->is_string()) bad("kvlens.select", "expected first, best, majority or weighted");
            r.select = v->get<std::string>();
            try {
                parse_strategy(r.select);
            } catch (const Error& e) {
                bad("kvlens.select", e.what());
            }
        }
        if (const json* v = field(*k, "score")) {
            if (!v->is_string()) bad("kvlens.score", "expected a score name, e.g. kv_coe_r");
            r.select_score = v->get<std::string>();
            const std::map<std::string, double> names = CoeResult{}.named();
            const bool combined =
                !calibration_.empty() && calibration_[0].method == CalibrationMethod::Logistic;
            if (combined && r.select_score != calibration_[0].score)
                bad("kvlens.score",
                    "'" + r.select_score + "': the server's calibration combines several scores into '" +
                        calibration_[0].score + "'; select by that (or leave kvlens.score out)");
            if (!names.count(r.select_score) && !combined)
                bad("kvlens.score",
                    "'" + r.select_score + "': no such score (e.g. kv_coe_r, hs_coe_c, inv_ppl)");
        }
        if (const json* v = field(*k, "matcher")) {
            if (!v->is_string()) bad("kvlens.matcher", "expected a matcher name");
            r.matcher = v->get<std::string>();
            try {
                parse_matcher(r.matcher);
            } catch (const Error& e) {
                bad("kvlens.matcher", e.what());
            }
        }
        r.abstain_below = number_in(*k, "abstain_below", 0, 1e9, -1, "kvlens");
        r.scores_every = (int)integer_in(*k, "scores_every", 0, 1 << 20, 0, "kvlens");
    }
    if (r.select_score.empty()) r.select_score = calibration_.empty() ? "hs_coe_c" : calibration_[0].score;
    if (r.n > 1) {
        if (r.stream) bad("stream", "not supported with n > 1 (the answers are chosen among after the fact)");
        if (r.think == "auto" || parse_think_exit(r.think).kind != ThinkExit::None)
            bad(think_param, r.think + " is not supported with n > 1");
        const Strategy st = parse_strategy(r.select);
        if (st == Strategy::WeightedVote && calibration_.empty())
            bad("kvlens.select",
                "weighted needs a server started with --calibration (votes are probabilities)");
        if (r.abstain_below >= 0 && st == Strategy::BestOfN && calibration_.empty())
            bad("kvlens.abstain_below", "with best, needs --calibration (a raw score has no scale)");
    }
    return r;
}

int Api::context_for(int n_prompt, int max_tokens) const {
    return std::min(n_ctx_, n_prompt + max_tokens + 8);
}

json Api::chat(const ChatRequest& req, const std::function<bool(const json&)>& on_chunk) const {
    int max_tokens = req.max_tokens > 0 ? req.max_tokens : params_.default_max_tokens;
    const json base = {
        {"id", "chatcmpl-" + std::to_string(std::time(nullptr)) + "-" + std::to_string(next_id_++)},
        {"created", (int64_t)std::time(nullptr)},
        {"model", model_id_},
        {"system_fingerprint", std::string("kvlens-") + KVLENS_VERSION}};
    const ThinkExitPolicy exit_policy = parse_think_exit(req.think);
    const bool exits = exit_policy.kind != ThinkExit::None;
    // Routing and the think exits run their own loop (run_fast_slow), in a context of their own.
    const bool routed = req.think == "auto" || exits;
    const std::string text = routed ? render_chat_undecided(tmpl_, req.messages)
                                    : render_chat(tmpl_, req.messages, true, parse_think_mode(req.think));
    const std::vector<llama_token> prompt = model_.tokenize(text, true, true);
    // Routing adds the mode's text (at most the empty think block) and perhaps a switch's or an exit's.
    const int reserve = routed ? 16 : 0;
    if ((int)prompt.size() + reserve + 1 >= n_ctx_)
        throw ApiError(400, "messages",
                       "messages: the prompt is " + std::to_string(prompt.size()) +
                           " tokens, more than the context of " + std::to_string(n_ctx_) +
                           " leaves room for (server --ctx)");
    max_tokens = std::min(max_tokens, n_ctx_ - (int)prompt.size() - reserve - 1);

    const bool prompt_opens_think = ends_in_think_block(text);
    DeltaStream stream(on_chunk, base, prompt_opens_think, req.stop);

    if (req.n > 1) return chat_n(req, prompt, prompt_opens_think, max_tokens, base);

    Slot slot(*this);
    std::string out_text;
    bool stop_string = false, timed_out = false;
    int n_completion = 0;
    StopReason stop = StopReason::MaxTokens;
    json extra = json::object();
    json cost = json::object();
    const auto request_started = std::chrono::steady_clock::now();
    if (routed) {  // its own context: the router may drop a fast answer and switch mid-way
        SessionParams sp = params_.session;
        sp.n_ctx = context_for((int)prompt.size() + reserve, max_tokens);
        if (exit_policy.kind == ThinkExit::Deer)  // the trials: the close and an answer on a copy
            sp.n_ctx = std::min(n_ctx_, sp.n_ctx + (int)exit_policy.trial_max_tokens + 8);
        sp.n_batch = std::min(sp.n_ctx, std::max(1, params_.session.n_batch));
        sp.n_seq_max = exit_policy.kind == ThinkExit::Deer ? 2 : 1;
        Session session(model_, sp);

        // The timeout counts from here, once the request's turn has come and its context exists.
        const auto started = std::chrono::steady_clock::now();
        auto out_of_time = [&] {
            if ((params_.timeout_s > 0 &&
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() >=
                     params_.timeout_s) ||
                shutting_down())
                timed_out = true;
            return timed_out;
        };
        FastSlowParams fp;
        fp.start = exits ? ThinkStart::Slow : ThinkStart::Auto;
        fp.allow_switch = !exits;
        fp.exit = exit_policy;
        fp.policy = RoutePolicy{};
        fp.max_tokens = max_tokens;
        fp.sampling = req.sampling;
        bool alive = true;
        // Streamed once the tokens are final (a fast answer may still be dropped by a switch to thinking).
        fp.on_token = [&](const FastSlowResult& so_far, bool tokens_final) {
            const std::string t = model_.detokenize(so_far.tokens);
            if (const size_t at = find_stop(t, req.stop); at != std::string::npos) {
                out_text = t.substr(0, at);
                stop_string = true;
                return false;
            }
            if (tokens_final) alive = stream.update(t, false);
            return alive && !out_of_time();
        };
        const FastSlowResult r =
            exits ? run_fast_slow(session, tmpl_, req.messages, {32, 8}, nullptr, fp)
                  : run_fast_slow(session, tmpl_, req.messages, router_->features, &router_->classifier, fp);
        if (!alive) return json();
        if (!stop_string) out_text = r.text;
        n_completion = r.n_generated();
        stop = r.stop;
        json checks = json::array();
        for (const auto& [n, d] : r.checks) checks.push_back({n, d});
        if (exits)
            extra["think"] = {{"mode", req.think},
                              {"exit", r.exit},
                              {"switch_at", r.switch_at},
                              {"n_sampled", r.n_sampled},
                              {"n_switch_tokens", r.n_switch_tokens}};
        else
            extra["think"] = {{"mode", "auto"},
                              {"prompt_score", r.prompt_score},
                              {"initial", to_string(r.initial)},
                              {"final", to_string(r.final)},
                              {"switch_at", r.switch_at},
                              {"n_sampled", r.n_sampled},
                              {"n_switch_tokens", r.n_switch_tokens},
                              {"n_dropped", r.n_dropped},
                              {"checks", checks}};
        cost = {{"n_think_tokens", r.n_think},        {"n_answer_tokens", r.n_answer},
                {"n_trial_tokens", r.n_trial},        {"n_trials", r.n_trials},
                {"n_decode_calls", r.n_decode_calls}, {"wall_ms", r.wall_ms}};
    } else {  // the shared batch
        auto job = std::make_shared<BatchJob>();
        job->model = &model_;
        job->prompt = prompt;
        job->max_tokens = max_tokens;
        job->sampling = req.sampling;
        job->stop = req.stop;
        job->streaming = (bool)on_chunk;
        job->scores_every = req.scores_every;
        job->timeout_s = params_.timeout_s;  // counted from when it joins the batch
        job->api = this;
        // However this thread leaves, the job stops at its next token (a no-op once it is done).
        const std::shared_ptr<void> cancel_on_exit(nullptr, [job](void*) { job->cancel = true; });
        sched_->submit(job);
        bool alive = true;
        for (bool done = false; !done;) {
            std::vector<BatchJob::Event> events;
            {
                std::unique_lock<std::mutex> lock(job->mu);
                job->cv.wait(lock, [&] { return job->done || !job->events.empty(); });
                events.swap(job->events);
                done = job->done;
            }
            for (const BatchJob::Event& e : events) {
                if (!alive) break;
                alive = stream.update(e.text, false);
                if (alive && e.has_scores) {
                    json c =
                        stream.chunk(json::object(), nullptr);  // an empty delta carrying the scores so far
                    c["kvlens"] = {{"scores", scores_json(e.scores, calibration_)},
                                   {"n_generated", e.n_generated}};
                    alive = stream.send(c);
                }
                if (!alive) job->cancel = true;  // the client went away: its cells are freed at the next step
            }
        }
        if (!job->error.empty()) throw Error("generation failed: " + job->error);
        const Generation& g = job->gen;
        stop_string = job->stop_string;
        out_text = stop_string ? job->out_text : g.text;
        n_completion = (int)g.output.size();
        stop = g.stop;
        timed_out = job->timed_out;
        if (!alive) return json();  // the client went away
        extra["scores"] = scores_json(job->scores, calibration_);
        extra["think"] = {{"mode", req.think}};
        const auto [n_think, n_answer] = think_split(model_, g.output, prompt_opens_think);
        // Decode calls are batch steps shared with the other requests: not this request's alone.
        cost = {{"n_think_tokens", n_think},
                {"n_answer_tokens", n_answer},
                {"n_trial_tokens", 0},
                {"n_trials", 0},
                {"n_decode_calls", nullptr},
                {"wall_ms",
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - request_started)
                     .count()}};
    }
    extra["cost"] = cost;
    extra["n_prompt"] = (int)prompt.size();
    extra["n_generated"] = n_completion;
    timed_out = timed_out && stop == StopReason::Callback && !stop_string;  // not when it ended anyway
    const bool shut = timed_out && shutting_down();
    extra["stop"] = stop_string ? "stop_string" : shut ? "shutdown" : timed_out ? "timeout" : to_string(stop);
    if (timed_out) extra[shut ? "shutdown" : "timeout"] = true;  // finish_reason "length": cut, not finished

    std::string reasoning, content;
    split_reasoning(out_text, prompt_opens_think, reasoning, content);
    const char* finish = finish_reason(stop, stop_string);
    const json usage = {{"prompt_tokens", (int)prompt.size()},
                        {"completion_tokens", n_completion},
                        {"total_tokens", (int)prompt.size() + n_completion}};
    if (on_chunk) {
        stream.update(out_text, true);
        json last = stream.chunk(json::object(), finish);
        last["kvlens"] = extra;
        if (!stream.send(last)) return json();
        if (req.include_usage) {
            json u = base;
            u["object"] = "chat.completion.chunk";
            u["choices"] = json::array();
            u["usage"] = usage;
            stream.send(u);
        }
    }
    json message = {{"role", "assistant"}, {"content", content}};
    if (!reasoning.empty()) message["reasoning_content"] = reasoning;
    json resp = base;
    resp["object"] = "chat.completion";
    resp["choices"] =
        json::array({{{"index", 0}, {"message", message}, {"logprobs", nullptr}, {"finish_reason", finish}}});
    resp["usage"] = usage;
    resp["kvlens"] = extra;
    return resp;
}

void Api::shutdown(double grace_s) const noexcept {
    static_assert(std::atomic<int64_t>::is_always_lock_free, "shutdown() is called from a signal handler");
    const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::steady_clock::now().time_since_epoch())
                            .count();
    const int64_t at = now + (int64_t)(std::max(0.0, std::min(grace_s, 1e6)) * 1e9);
    int64_t cur = shutdown_at_ns_.load();
    while (at < cur && !shutdown_at_ns_.compare_exchange_weak(cur, at)) {
    }
}

bool Api::shutting_down() const noexcept {
    const int64_t at = shutdown_at_ns_.load(std::memory_order_relaxed);
    return at != INT64_MAX && std::chrono::duration_cast<std::chrono::nanoseconds>(
                                  std::chrono::steady_clock::now().time_since_epoch())
                                      .count() >= at;
}

// n samples decoded together, each a choice with its scores; one chosen by the request's strategy.
json Api::chat_n(const ChatRequest& req, const std::vector<llama_token>& prompt, bool prompt_opens_think,
                 int max_tokens, const json& base) const {
    const Strategy strategy = parse_strategy(req.select);
    const MatcherKind matcher = parse_matcher(req.matcher);

    Slot slot(*this);
    SessionParams sp = params_.session;
    // The prompt once, then every sample's tokens.
    sp.n_ctx = std::min(n_ctx_ * req.n, (int)prompt.size() + req.n * (max_tokens + 1) + 8);
    sp.n_batch = std::min(sp.n_ctx, std::max(1, params_.session.n_batch));
    sp.n_seq_max = req.n;
    Session session(model_, sp);
    SampleParams p;
    p.token_coe = params_.token_coe;
    p.n = req.n;
    p.max_tokens = max_tokens;
    p.sampling = req.sampling;
    // The timeout and the shutdown as for one answer: every sample stops with what it has.
    const auto started = std::chrono::steady_clock::now();
    bool timed_out = false;
    p.keep_going = [&] {
        timed_out = (params_.timeout_s > 0 &&
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() >=
                         params_.timeout_s) ||
                    shutting_down();
        return !timed_out;
    };
    const SampleSet set = sample_n(session, prompt, p);
    const char* cut = !timed_out ? nullptr : shutting_down() ? "shutdown" : "timeout";

    json choices = json::array();
    std::vector<Candidate> cands;
    int completion = 0;
    for (int i = 0; i < req.n; ++i) {
        const SampleOut& s = set.samples[i];
        // Stop strings after the fact: every generated token is still counted.
        const size_t stop_at = find_stop(s.gen.text, req.stop);
        const bool stop_string = stop_at != std::string::npos;
        const std::string out = s.gen.text.substr(0, stop_at);
        std::string reasoning, content;
        split_reasoning(out, prompt_opens_think, reasoning, content);
        const json sj = scores_json(s.scores, calibration_);
        const auto it = s.scores.find(req.select_score);
        const bool own = !calibration_.empty() && req.select_score == calibration_[0].score;
        if (it == s.scores.end() && !own) bad("kvlens.score", "'" + req.select_score + "': no such score");
        // The calibration's own score (a logistic one reads several); another score keeps the old behaviour.
        const double score = calibration_.empty() ? it->second
                             : own                ? calibration_[0].apply(s.scores)
                                                  : calibration_[0].apply(it->second);
        const MatchResult m = match_answer(matcher, content, "");
        cands.push_back({m.extracted, score});
        json message = {{"role", "assistant"}, {"content", content}};
        if (!reasoning.empty()) message["reasoning_content"] = reasoning;
        const int n_gen = (int)s.gen.output.size();
        completion += n_gen;
        choices.push_back(
            {{"index", i},
             {"message", message},
             {"logprobs", nullptr},
             {"finish_reason", finish_reason(s.gen.stop, stop_string)},
             {"kvlens",
              {{"scores", sj},
               {"extracted", m.extracted},
               {"n_generated", n_gen},
               {"stop", stop_string                                 ? "stop_string"
                        : cut && s.gen.stop == StopReason::Callback ? cut
                                                                    : to_string(s.gen.stop)}}}});
    }
    const Choice ch = select_answer(strategy, cands);
    const bool abstained = req.abstain_below >= 0 && !answers(ch.confidence, req.abstain_below);
    json resp = base;
    resp["object"] = "chat.completion";
    resp["choices"] = choices;
    resp["usage"] = {{"prompt_tokens", (int)prompt.size()},
                     {"completion_tokens", completion},
                     {"total_tokens", (int)prompt.size() + completion}};
    resp["kvlens"] = {{"n_prompt", (int)prompt.size()},
                      {"n_generated", completion},
                      {"think", {{"mode", req.think}}},
                      {"selection",
                       {{"strategy", to_string(strategy)},
                        {"score", strategy == Strategy::Majority ? json() : json(req.select_score)},
                        {"matcher", req.matcher},
                        {"index", ch.index},
                        {"answer", ch.answer},
                        {"confidence", std::isfinite(ch.confidence) ? json(ch.confidence) : json()},
                        {"votes", ch.votes},
                        {"abstained", abstained}}}};
    if (cut) resp["kvlens"][cut] = true;
    return resp;
}

json Api::embeddings(const json& body) const {
    if (!body.is_object()) bad("body", "expected a JSON object");
    const json* in = field(body, "input");
    if (!in) bad("input", "required: a string or an array of strings");
    std::vector<std::string> texts;
    if (in->is_string()) {
        texts.push_back(in->get<std::string>());
    } else if (in->is_array() && !in->empty() && in->size() <= 2048) {
        for (size_t i = 0; i < in->size(); ++i) {
            if (!(*in)[i].is_string())
                bad("input[" + std::to_string(i) + "]", "expected a string (token arrays are not supported)");
            texts.push_back((*in)[i].get<std::string>());
        }
    } else {
        bad("input", "expected a string or an array of 1 to 2048 strings");
    }
    std::string format = "float";
    if (const json* f = field(body, "encoding_format")) {
        if (!f->is_string() || (*f != "float" && *f != "base64"))
            bad("encoding_format", "expected float or base64");
        format = f->get<std::string>();
    }
    for (size_t i = 0; i < texts.size(); ++i) {
        const std::string problem = text_problem(texts[i]);
        if (!problem.empty()) bad("input[" + std::to_string(i) + "]", problem);
    }

    Slot slot(*this);
    EmbedParams ep;
    const int n_layers =
        std::min(4, model_.info().n_layer);  // the preset's last 4, or all of a smaller model
    ep.spec.layers.clear();
    for (int l = -n_layers; l < 0; ++l) ep.spec.layers.push_back(l);
    SessionParams sp = params_.session;
    sp.n_ctx = n_ctx_;
    sp.n_batch = std::min(n_ctx_, 2048);
    sp.n_seq_max = ep.batch_seqs;
    Session session(model_, sp);
    Embedder embedder(session, ep);
    if (const json* d = field(body, "dimensions"))
        if (!d->is_number_integer() || d->get<int64_t>() != embedder.kv_width())
            bad("dimensions", "this model's KV embeddings have " + std::to_string(embedder.kv_width()) +
                                  " dimensions; other sizes are not supported");
    const std::vector<Embedding> out = embedder.embed(texts);
    json data = json::array();
    int64_t n_tokens = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        if (!out[i].ok) bad("input[" + std::to_string(i) + "]", out[i].error);
        n_tokens += out[i].n_tokens;
        data.push_back(
            {{"object", "embedding"},
             {"index", (int)i},
             {"embedding", format == "base64" ? json(floats_base64(out[i].kv)) : json(out[i].kv)}});
    }
    return {{"object", "list"},
            {"data", data},
            {"model", model_id_},
            {"usage", {{"prompt_tokens", n_tokens}, {"total_tokens", n_tokens}}},
            {"kvlens",
             {{"pooling", "K;V, mean over tokens (BOS excluded), heads averaged, mean of the last " +
                              std::to_string(n_layers) + " layers, L2-normalised"}}}};
}

}  // namespace kvlens
