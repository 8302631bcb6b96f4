// The HTTP front end: the OpenAI-compatible API of api.h on the wire (cpp-httplib), with server-sent events
// for "stream": true, OpenAI-shaped JSON errors, and a small web page at / to watch it work.
//
//   GET  /health                      {"status": "ok"}
//   GET  /v1/models                   the model, with kvlens's facts about it
//   POST /v1/chat/completions         + "kvlens": scores, thinking mode, switch, token counts
//   POST /v1/embeddings               KV embeddings (float or base64)
//   GET  /                            the web page
#pragma once

#include <functional>
#include <string>

#include "server/api.h"

namespace kvlens {

struct ServerParams {
    std::string host = "127.0.0.1";
    int port = 8080;              // 0: any free port
    int http_threads = 8;         // connections served at once (requests beyond Api's `parallel` wait)
    size_t max_body = 16u << 20;  // bytes; larger bodies get 413
};

// Binds, calls on_listening(port) once the socket accepts connections, and serves until stop_server() (or
// SIGINT / SIGTERM when installed by the caller). Throws Error when the address cannot be bound.
void run_server(const Api& api, const ServerParams& params,
                const std::function<void(int port)>& on_listening);
// Makes run_server return; safe from a signal handler's thread (not from the handler itself).
void stop_server();

// The web page served at / (HTML with inline script).
const char* server_page();

}  // namespace kvlens
