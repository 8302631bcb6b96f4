// Router file (methods/router.h): router_from_json on arbitrary text; what it accepts must survive a
// round trip through router_to_json unchanged.
#include <cstdlib>

#include "fuzz_util.h"
#include "methods/router.h"
#include "util/error.h"

using namespace kvlens;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    RouterFile r;
    try {
        r = router_from_json(fuzz::as_string(data, size), "fuzz.router.json");
    } catch (const Error&) {
        return 0;
    }
    const std::string once = router_to_json(r);
    const std::string twice = router_to_json(router_from_json(once, "round trip"));
    if (once != twice) std::abort();
    return 0;
}
