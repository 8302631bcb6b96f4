// The server's request step (service/openai_api.h) without HTTP: a tiny model loaded once, one Api over it.
// KVLENS_FUZZ_MODEL names the GGUF (default: the tests' tiny Llama, KVLENS_FUZZ_DEFAULT_MODEL).
#pragma once

#include <cstdlib>
#include <memory>

#include "engine/model.h"
#include "service/openai_api.h"

namespace kvlens::fuzz {

inline Api& fuzz_api() {
    static std::unique_ptr<Model> model;
    static std::unique_ptr<Api> api;
    if (!api) {
        set_verbose(false);
        const char* path = std::getenv("KVLENS_FUZZ_MODEL");
        model = std::make_unique<Model>(ModelParams{path && *path ? path : KVLENS_FUZZ_DEFAULT_MODEL});
        ApiParams p;
        p.session.n_ctx = 256;  // every request fits or is refused by the context check
        p.session.n_threads = 1;
        p.max_n = 4;
        api = std::make_unique<Api>(*model, p);
    }
    return *api;
}

}  // namespace kvlens::fuzz
