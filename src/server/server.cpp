#include "server/server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace kvlens {

using nlohmann::json;

bool same_secret(const std::string& a, const std::string& b) {
    const size_t n = std::max(a.size(), b.size());
    volatile unsigned char diff = a.size() != b.size() ? 1 : 0;  // volatile: no early exit is compiled in
    for (size_t i = 0; i < n; ++i) {
        const unsigned char x = i < a.size() ? (unsigned char)a[i] : 0;
        const unsigned char y = i < b.size() ? (unsigned char)b[i] : 0;
        diff = diff | (unsigned char)(x ^ y);
    }
    return diff == 0;
}

bool bearer_matches(const std::string& authorization, const std::string& key) {
    static const char scheme[] = "bearer ";
    if (authorization.size() < 7) return false;
    for (size_t i = 0; i < 7; ++i)
        if (std::tolower((unsigned char)authorization[i]) != scheme[i]) return false;
    const size_t start = authorization.find_first_not_of(' ', 7);
    return same_secret(start == std::string::npos ? "" : authorization.substr(start), key);
}

namespace {

std::atomic<httplib::Server*> g_server{nullptr};

// {"error": {"message", "type", "param", "code"}} as OpenAI sends it (empty param / code: null).
json error_json(const std::string& message, const std::string& type, const std::string& param,
                const std::string& code = "") {
    return {{"error",
             {{"message", message},
              {"type", type},
              {"param", param.empty() ? json(nullptr) : json(param)},
              {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

void send_json(httplib::Response& res, int status, const json& j) {
    res.status = status;
    res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message,
                const std::string& type = "invalid_request_error", const std::string& param = "",
                const std::string& code = "") {
    send_json(res, status, error_json(message, type, param, code));
}

// A refused or failed request of the service; a bug's message says so.
void send_error(httplib::Response& res, kvlens_status st, const kvlens_request_error& e, int retry_after_s) {
    if (st == KVLENS_ERR_BUSY) res.set_header("Retry-After", std::to_string(retry_after_s));
    send_error(res, e.http_status, st == KVLENS_ERR_INTERNAL ? "internal error: " + e.message : e.message,
               e.type, e.param, e.code);
}

std::string sse(const std::string& json_text) {
    return "data: " + json_text + "\n\n";
}

}  // namespace

void run_server(const kvlens_service* service, const ServerParams& params,
                const std::function<void(int port)>& on_listening) {
    httplib::Server svr;
    const size_t threads = (size_t)std::max(2, params.http_threads);
    const size_t admitted = (size_t)kvlens_service_max_admitted(service);  // 0: no bound
    svr.new_task_queue = [threads, admitted] {
        return new httplib::ThreadPool(threads, admitted ? threads + admitted : threads);
    };
    svr.set_payload_max_length(params.max_body);
    const int retry_after = std::max(0, params.retry_after_s);

    // The API key, checked before any route reads the body.
    if (!params.api_key.empty()) {
        svr.set_pre_routing_handler(
            [key = params.api_key](const httplib::Request& req, httplib::Response& res) {
                if (req.method == "GET" && (req.path == "/health" || req.path == "/"))
                    return httplib::Server::HandlerResponse::Unhandled;
                if (bearer_matches(req.get_header_value("Authorization"), key))
                    return httplib::Server::HandlerResponse::Unhandled;
                res.set_header("WWW-Authenticate", "Bearer");
                send_error(res, 401,
                           req.has_header("Authorization")
                               ? "invalid API key"
                               : "this server needs an API key: send \"Authorization: Bearer <key>\"",
                           "authentication_error", "", "invalid_api_key");
                return httplib::Server::HandlerResponse::Handled;
            });
    }

    svr.Get("/health", [](const httplib::Request&, httplib::Response& res) {
        send_json(res, 200, {{"status", "ok"}});
    });
    svr.Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(server_page(), "text/html; charset=utf-8");
    });
    auto models = [service](const httplib::Request&, httplib::Response& res) {
        std::string out;
        if (kvlens_service_models(service, &out) != KVLENS_OK) {
            send_error(res, 500, std::string("internal error: ") + kvlens_last_error(), "server_error");
            return;
        }
        res.status = 200;
        res.set_content(out, "application/json");
    };
    svr.Get("/v1/models", models);
    svr.Get("/models", models);

    auto chat = [service, retry_after](const httplib::Request& req, httplib::Response& res) {
        kvlens_request_error err;
        kvlens_chat_request* parsed = nullptr;
        // Bad requests fail here, before any streaming, and a full line next (503).
        kvlens_status st = kvlens_service_parse_chat(service, req.body, &parsed, &err);
        if (st != KVLENS_OK) return send_error(res, st, err, retry_after);
        const std::shared_ptr<const kvlens_chat_request> r(parsed, kvlens_chat_request_free);
        kvlens_admission* admission = nullptr;
        st = kvlens_service_admit(service, &admission, &err);
        if (st != KVLENS_OK) return send_error(res, st, err, retry_after);
        const std::shared_ptr<kvlens_admission> turn(admission, kvlens_admission_free);
        if (!kvlens_chat_request_stream(r.get())) {
            std::string out;
            st = kvlens_service_chat(service, r.get(), {}, &out, &err);
            if (st != KVLENS_OK) return send_error(res, st, err, retry_after);
            res.status = 200;
            res.set_content(out, "application/json");
            return;
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider(
            "text/event-stream", [service, r, turn](size_t, httplib::DataSink& sink) {
                auto send = [&sink](const std::string& j) {
                    const std::string s = sse(j);
                    return sink.is_writable() && sink.write(s.data(), s.size());
                };
                std::string out;
                kvlens_request_error e;
                if (kvlens_service_chat(service, r.get(), send, &out, &e) == KVLENS_OK) {
                    const std::string done = "data: [DONE]\n\n";
                    sink.write(done.data(), done.size());
                } else {  // headers are sent: the error goes as an event
                    send(error_json(e.message, e.type, e.param, e.code)
                             .dump(-1, ' ', false, json::error_handler_t::replace));
                }
                sink.done();
                return true;
            });
    };
    svr.Post("/v1/chat/completions", chat);
    svr.Post("/chat/completions", chat);

    auto embeddings = [service, retry_after](const httplib::Request& req, httplib::Response& res) {
        // Text that is not JSON is refused before the line (400), as a chat request is.
        try {
            const json body = json::parse(req.body);
        } catch (const json::exception& e) {  // parse_error; out_of_range (406) for 1E750053830
            return send_error(res, 400, std::string("request body: invalid JSON (") + e.what() + ")",
                              "invalid_request_error", "body");
        }
        kvlens_request_error err;
        kvlens_admission* admission = nullptr;
        kvlens_status st = kvlens_service_admit(service, &admission, &err);
        if (st != KVLENS_OK) return send_error(res, st, err, retry_after);
        const kvlens_admission_ptr turn(admission);
        std::string out;
        st = kvlens_service_embeddings(service, req.body, &out, &err);
        if (st != KVLENS_OK) return send_error(res, st, err, retry_after);
        res.status = 200;
        res.set_content(out, "application/json");
    };
    svr.Post("/v1/embeddings", embeddings);
    svr.Post("/embeddings", embeddings);

    // Whatever no handler answered (unknown path, wrong method, body too large) gets a JSON error too.
    svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return;
        const std::string what = res.status == 404 ? "no such endpoint: " + req.method + " " + req.path
                                 : res.status == 413
                                     ? "body: the request body is larger than the server takes "
                                       "(server --max-body-bytes)"
                                 : res.status == 405 ? "method not allowed: " + req.method + " " + req.path
                                                     : "HTTP " + std::to_string(res.status);
        send_error(res, res.status, what, res.status == 404 ? "not_found_error" : "invalid_request_error",
                   res.status == 413 ? "body" : "");
    });

    int port = params.port;
    if (port == 0) {
        port = svr.bind_to_any_port(params.host);
        if (port < 0) throw Error("serve: cannot bind " + params.host + " to any port");
    } else if (!svr.bind_to_port(params.host, port)) {
        throw Error("serve: cannot bind " + params.host + ":" + std::to_string(port) +
                    " (in use, or not an address of this machine)");
    }
    g_server = &svr;
    if (on_listening) on_listening(port);
    svr.listen_after_bind();
    g_server = nullptr;
}

void stop_server() {
    if (httplib::Server* s = g_server.load()) s->stop();
}

}  // namespace kvlens
