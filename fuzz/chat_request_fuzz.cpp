// Chat-completion request bodies: the JSON -> validated request step of the server (Api::parse_chat).
// As the server does, text that is not JSON is refused before it (400); a JSON value must give a
// ChatRequest within the server's limits or an ApiError with a 4xx status naming a parameter.
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
        const ChatRequest r = fuzz::fuzz_api().parse_chat(body);
        if (r.messages.empty() || r.n < 1 || r.n > 4 || r.max_tokens < 0) std::abort();
    } catch (const ApiError& e) {
        if (e.status < 400 || e.status >= 500 || e.param.empty()) std::abort();
    }
    return 0;
}
