// `--tokens` lists (engine/model.h parse_token_ids): refused with kvlens::Error or parsed into ids in
// [0, n_vocab), one per comma-separated item.
#include <algorithm>
#include <cstdlib>

#include "engine/model.h"
#include "fuzz_util.h"
#include "util/error.h"

using namespace kvlens;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string list = fuzz::as_string(data, size);
    for (int n_vocab : {1, 32000, 151936}) {
        std::vector<llama_token> ids;
        try {
            ids = parse_token_ids(list, n_vocab);
        } catch (const Error&) {
            continue;
        }
        if (ids.empty()) std::abort();
        for (llama_token t : ids)
            if (t < 0 || t >= n_vocab) std::abort();
        const size_t items = std::count(list.begin(), list.end(), ',') + (list.back() == ',' ? 0 : 1);
        if (ids.size() != items) std::abort();
    }
    return 0;
}
