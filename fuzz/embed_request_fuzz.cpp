// Embedding request bodies (Api::embeddings on a tiny model): a JSON value gives an OpenAI-shaped list of
// embeddings or an ApiError with a 4xx status naming a parameter.
#include <cstdlib>

#include "fuzz_util.h"
#include "request_fuzz_common.h"

using namespace kvlens;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)fuzz::fuzz_api();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const nlohmann::json body = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) return 0;
    try {
        const nlohmann::json r = fuzz::fuzz_api().embeddings(body);
        if (!r.is_object() || !r.contains("data") || !r["data"].is_array() || r["data"].empty()) std::abort();
    } catch (const ApiError& e) {
        if (e.status < 400 || e.status >= 500 || e.param.empty()) std::abort();
    }
    return 0;
}
