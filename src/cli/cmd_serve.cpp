// kvlens serve: the OpenAI-compatible HTTP server (chat completions with KV-CoE scores and fast/slow
// routing, KV embeddings) and its web page.
#include <atomic>
#include <csignal>
#include <cstdio>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "cli/common.h"
#include "server/server.h"

namespace kvlens::cli {

namespace {

struct ServeOptions {
    ModelOptions model;
    ServerParams server;
    kvlens_service_params api = kvlens_service_default_params();
    std::string chat_template = "auto", router, calibration, score = "hs_coe_c";
    TokenCoeOptions coe;
    double shutdown_grace_s = 5;
};

// What SIGTERM / SIGINT reach: the running server's service and its grace period.
std::atomic<const kvlens_service*> g_service{nullptr};
double g_grace_s = 5;

extern "C" void on_signal(int) {
    // New connections stop now; completions still running get the grace period, then stop with what they
    // have (finish_reason "length"), so the process exits within a bound however long they asked to run.
    if (const kvlens_service* s = g_service.load()) kvlens_service_shutdown(s, g_grace_s);
    stop_server();
}

void run_serve(const ServeOptions& o) {
#if defined(__GLIBC__)
    // A server creates and frees contexts (n > 1, think auto, embeddings) for as long as it runs. glibc
    // raises its mmap threshold to the largest block freed, after which multi-MB KV and compute buffers come
    // from the heap and fragment it: RSS grew 50-120% in a 40 s load run (tests/python/load_server.py) and
    // leveled off only slowly. A fixed threshold keeps such buffers in mmap, returned to the system when
    // freed.
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
    kvlens_service_params ap = o.api;
    ap.session = api_session_params(o.model);  // n_ctx 0: the service's default
    ap.session.chat_template = o.chat_template;
    ap.session.router_path = o.router;
    set_token_coe(ap.session, o.coe);
    {
        // The flags before the model loads; n_ctx 0 and the chat template are the service's to check.
        kvlens_session_params early = ap.session;
        early.n_ctx = 1;
        early.chat_template = "auto";
        check(kvlens_session_params_check(early), flag_names());
    }
    if (!o.calibration.empty())
        ap.session.calibration_path =
            o.calibration == "auto" ? kvlens_default_calibration_path(o.model.model, o.score) : o.calibration;
    const kvlens_model_ptr model = open_model(o.model);
    kvlens_service* svc = nullptr;
    check(kvlens_service_open(model.get(), ap, &svc));
    const kvlens_service_ptr service(svc);
    g_grace_s = o.shutdown_grace_s;
    g_service = service.get();
    struct Forget {  // the handler must not reach the service once it is gone
        ~Forget() { g_service = nullptr; }
    } forget;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    run_server(service.get(), o.server, [&](int port) {
        fprintf(stderr, "kvlens: serving %s on http://%s:%d (parallel %d, queue %d, %s)\n",
                kvlens_service_model_id(service.get()), o.server.host.c_str(), port, ap.parallel, ap.queue,
                o.server.api_key.empty() ? "no API key" : "API key required");
        fflush(stderr);
    });
    fprintf(stderr, "kvlens: server stopped\n");
}

}  // namespace

CLI::App* add_serve_command(CLI::App& app) {
    auto o = std::make_shared<ServeOptions>();
    o->model.ctx = 0;
    // The server's bounds where the library's service has none or a looser one: 16 requests waiting, 8
    // samples per request, 10 minutes per answer.
    o->api.queue = 16;
    o->api.max_n = 8;
    o->api.timeout_s = 600;
    CLI::App* cmd = app.add_subcommand(
        "serve",
        "OpenAI-compatible HTTP server: chat completions with KV-CoE scores and routing, embeddings");
    add_model_options(cmd, o->model);
    add_token_coe_options(cmd, o->coe);
    cmd->get_option("--ctx")
        ->description("most tokens one request may use, prompt + answer (0: min(training context, 4096))")
        ->check(CLI::Range(0, 1 << 20));
    cmd->add_option("--host", o->server.host,
                    "address to listen on (default: loopback only; 0.0.0.0 for every interface, then set "
                    "--api-key)")
        ->capture_default_str();
    cmd->add_option("--api-key", o->server.api_key,
                    "require \"Authorization: Bearer KEY\" on every route but GET /health and the page at / "
                    "(401 otherwise; compared in constant time)")
        ->envname("KVLENS_API_KEY");
    cmd->add_option("--port", o->server.port, "port (0: any free one; the chosen port is printed)")
        ->check(CLI::Range(0, 65535))
        ->capture_default_str();
    cmd->add_option("--parallel", o->api.parallel,
                    "slots: requests decoded together in one batch (continuous batching; one context of "
                    "parallel x --ctx cells); more wait in line")
        ->check(CLI::Range(1, 256))
        ->capture_default_str();
    cmd->add_option("--queue", o->api.queue,
                    "requests that may wait beyond the --parallel ones; more get 503 with Retry-After")
        ->check(CLI::Range(0, 4096))
        ->capture_default_str();
    cmd->add_option("--http-threads", o->server.http_threads,
                    "connections served at once (more are started for admitted requests)")
        ->check(CLI::Range(2, 1024))
        ->capture_default_str();
    cmd->add_option("--max-body-bytes", o->server.max_body, "largest request body; larger ones get 413")
        ->check(CLI::Range(size_t(1024), size_t(1) << 30))
        ->capture_default_str();
    cmd->add_option("--max-n", o->api.max_n, "most samples (\"n\") one request may ask for")
        ->check(CLI::Range(1, 256))
        ->capture_default_str();
    cmd->add_option("--max-messages", o->api.max_messages, "most messages in one request")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    cmd->add_option("--timeout-s", o->api.timeout_s,
                    "a completion (any n) generating longer stops with what it has (finish_reason length, "
                    "kvlens.timeout true; 0: never)")
        ->check(CLI::Range(0.0, 1e7))
        ->capture_default_str();
    cmd->add_option(
           "--shutdown-grace-s", o->shutdown_grace_s,
           "on SIGTERM / SIGINT: seconds running completions may still take before they stop with what "
           "they have (finish_reason length, kvlens.shutdown true); no new connections are taken")
        ->check(CLI::Range(0.0, 3600.0))
        ->capture_default_str();
    cmd->add_option("--alias", o->api.model_id, "model id in responses (default: the file name)");
    cmd->add_option("--max-tokens", o->api.default_max_tokens, "answer length when a request sets none")
        ->check(CLI::Range(1, 1 << 24))
        ->capture_default_str();
    cmd->add_option("--template", o->chat_template, "chat template: auto, chatml, qwen2, qwen3, ...")
        ->capture_default_str();
    cmd->add_option("--router", o->router, "router file (kvlens router train): enables think auto");
    cmd->add_option("--calibration", o->calibration,
                    "calibration file (kvlens calibrate), or 'auto': <model>.calibration.<score>.json; "
                    "adds p_correct to the scores");
    cmd->add_option("--score", o->score, "the score 'auto' calibration is for")->capture_default_str();
    cmd->callback([o] { run_serve(*o); });
    return cmd;
}

}  // namespace kvlens::cli
