// GGUF pre-validation (engine/model.h validate_gguf_file) on mutated files: it must refuse with
// kvlens::Error or accept; what it accepts has every tensor's data inside the file.
#include "engine/model.h"
#include "fuzz_util.h"
#include "util/error.h"

using namespace kvlens;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    set_verbose(false);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string& path = fuzz::scratch_path(".gguf");
    fuzz::write_file(path, fuzz::as_string(data, size));
    try {
        validate_gguf_file(path);
    } catch (const Error&) {
    }
    return 0;
}
