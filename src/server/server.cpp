#include "server/server.h"

#include <httplib.h>

#include <atomic>
#include <cstdio>

namespace kvlens {

using nlohmann::json;

namespace {

std::atomic<httplib::Server*> g_server{nullptr};

void send_json(httplib::Response& res, int status, const json& j) {
    res.status = status;
    res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message,
                const std::string& type = "invalid_request_error", const std::string& param = "",
                const std::string& code = "") {
    send_json(res, status, api_error_json(message, type, param, code));
}

// The request body as JSON, or a 400 naming the problem.
bool parse_body(const httplib::Request& req, httplib::Response& res, json& body) {
    try {
        body = json::parse(req.body);
        return true;
    } catch (const json::exception& e) {  // parse_error; out_of_range (406) for 1E750053830
        send_error(res, 400, std::string("request body: invalid JSON (") + e.what() + ")",
                   "invalid_request_error", "body");
        return false;
    }
}

// Runs f, turning what it throws into OpenAI-shaped errors.
template <class F>
void answering(httplib::Response& res, int retry_after_s, F&& f) {
    try {
        f();
    } catch (const ApiError& e) {
        if (e.status == 503) res.set_header("Retry-After", std::to_string(retry_after_s));
        send_error(res, e.status, e.what(), e.type, e.param, e.code);
    } catch (const Error& e) {
        send_error(res, 500, e.what(), "server_error");
    } catch (const std::exception& e) {
        send_error(res, 500, std::string("internal error: ") + e.what(), "server_error");
    }
}

std::string sse(const json& j) {
    return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace

void run_server(const Api& api, const ServerParams& params,
                const std::function<void(int port)>& on_listening) {
    httplib::Server svr;
    const size_t threads = (size_t)std::max(2, params.http_threads);
    const size_t admitted = (size_t)api.max_admitted();  // 0: no bound
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
    auto models = [&api](const httplib::Request&, httplib::Response& res) {
        send_json(res, 200, api.models());
    };
    svr.Get("/v1/models", models);
    svr.Get("/models", models);

    auto chat = [&api, retry_after](const httplib::Request& req, httplib::Response& res) {
        json body;
        if (!parse_body(req, res, body)) return;
        answering(res, retry_after, [&] {
            const ChatRequest r = api.parse_chat(body);  // bad requests fail here, before any streaming
            std::shared_ptr<void> turn = api.admit();    // and a full line here (503)
            if (!r.stream) {
                send_json(res, 200, api.chat(r));
                return;
            }
            res.set_header("Cache-Control", "no-cache");
            res.set_chunked_content_provider(
                "text/event-stream", [&api, r, turn](size_t, httplib::DataSink& sink) {
                    auto send = [&sink](const json& j) {
                        const std::string s = sse(j);
                        return sink.is_writable() && sink.write(s.data(), s.size());
                    };
                    try {
                        api.chat(r, send);
                        const std::string done = "data: [DONE]\n\n";
                        sink.write(done.data(), done.size());
                    } catch (const std::exception& e) {  // headers are sent: the error goes as an event
                        const ApiError* ae = dynamic_cast<const ApiError*>(&e);
                        send(api_error_json(e.what(), ae ? ae->type : "server_error", ae ? ae->param : "",
                                            ae ? ae->code : ""));
                    }
                    sink.done();
                    return true;
                });
        });
    };
    svr.Post("/v1/chat/completions", chat);
    svr.Post("/chat/completions", chat);

    auto embeddings = [&api, retry_after](const httplib::Request& req, httplib::Response& res) {
        json body;
        if (!parse_body(req, res, body)) return;
        answering(res, retry_after, [&] {
            const std::shared_ptr<void> turn = api.admit();
            send_json(res, 200, api.embeddings(body));
        });
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
