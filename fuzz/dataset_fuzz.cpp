// Dataset config + JSONL reader (eval/dataset.h). Input: the config's JSON text, a line "----", then the
// JSONL. The config's "file" is replaced by a scratch file holding the JSONL part.
#include <cstdlib>

#include "eval/dataset.h"
#include "fuzz_util.h"
#include "util/error.h"

using namespace kvlens;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string config_text, jsonl;
    fuzz::split_once(fuzz::as_string(data, size), "\n----\n", config_text, jsonl);
    DatasetConfig cfg;
    try {
        cfg = parse_dataset_config(config_text, "fuzz.json");
    } catch (const Error&) {
        return 0;
    }
    cfg.file = fuzz::scratch_path(".jsonl");
    fuzz::write_file(cfg.file, jsonl);
    try {
        const std::vector<Sample> samples = load_samples(cfg, 0);
        for (const Sample& s : samples)
            if (s.prompt.find('\0') != std::string::npos && s.question.find('\0') == std::string::npos &&
                cfg.prompt_template.find('\0') == std::string::npos)
                std::abort();  // a NUL that came from nowhere
    } catch (const Error&) {
    }
    return 0;
}
