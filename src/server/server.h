// The HTTP front end: the OpenAI-compatible service of the public API (kvlens_service_* in kvlens/kvlens.h)
// on the wire (cpp-httplib), with server-sent events for "stream": true, OpenAI-shaped JSON errors, and a
// small web page at / to watch it work. It includes nothing of the library but the public header.
//
//   GET  /health                      {"status": "ok"}
//   GET  /v1/models                   the model, with kvlens's facts about it
//   POST /v1/chat/completions         + "kvlens": scores, thinking mode, switch, token counts
//   POST /v1/embeddings               KV embeddings (float or base64)
//   GET  /                            the web page
//
// Hardening: loopback by default, an optional API key (401), a bounded body (413), a bounded line of waiting
// requests (503 with Retry-After), and the service's per-request limits (400 naming the parameter) and
// timeout.
#pragma once

#include <functional>
#include <string>

#include "kvlens/kvlens.h"

namespace kvlens {

struct ServerParams {
    std::string host = "127.0.0.1";  // loopback only unless told otherwise
    int port = 8080;                 // 0: any free port
    // Connections served at once; more threads are started, up to the service's parallel + queue beyond this,
    // so that every admitted request has one and a request beyond the queue gets its 503 at once.
    int http_threads = 8;
    size_t max_body = 1u << 20;  // bytes; larger bodies get 413 (param "body")
    // Non-empty: every route but GET /health and the page at / needs "Authorization: Bearer <api_key>";
    // otherwise 401 (authentication_error, code invalid_api_key). Compared in constant time (same_secret).
    std::string api_key;
    int retry_after_s = 1;  // the Retry-After of a 503 (the line is full)
};

// Binds, calls on_listening(port) once the socket accepts connections, and serves until stop_server() (or
// SIGINT / SIGTERM when installed by the caller). Throws Error when the address cannot be bound.
void run_server(const kvlens_service* service, const ServerParams& params,
                const std::function<void(int port)>& on_listening);
// Makes run_server return; safe from a signal handler's thread (not from the handler itself).
void stop_server();

// The web page served at / (HTML with inline script).
const char* server_page();

// Whether two secrets are equal, in a time that does not depend on where they differ: every byte of the
// longer one is compared (no early exit); only the length shows in the time.
bool same_secret(const std::string& a, const std::string& b);

// Whether an Authorization header value ("Bearer KEY", the scheme case-insensitive, as OpenAI clients and
// llama-server send it) carries `key` (compared with same_secret).
bool bearer_matches(const std::string& authorization, const std::string& key);

}  // namespace kvlens
