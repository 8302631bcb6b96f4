// Answer matchers (eval/matchers.h): every matcher on an arbitrary output and reference (input: output,
// a NUL byte, reference). They must not throw on any text and must be deterministic; an output equal to
// "Answer: <reference>" must match under number_after_answer when the reference is a plain integer.
#include <cstdlib>

#include "eval/matchers.h"
#include "fuzz_util.h"
#include "util/error.h"

using namespace kvlens;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string output, reference;
    fuzz::split_once(fuzz::as_string(data, size), std::string(1, '\0'), output, reference);
    for (const std::string& name : matcher_names()) {
        const MatcherKind kind = parse_matcher(name);
        const MatchResult a = match_answer(kind, output, reference);
        const MatchResult b = match_answer(kind, output, reference);
        if (a.correct != b.correct || a.extracted != b.extracted) std::abort();
    }
    (void)last_number(output);
    bool integer = !reference.empty() && reference.size() < 12;
    for (char ch : reference) integer = integer && ch >= '0' && ch <= '9';
    if (integer && !match_answer(MatcherKind::NumberAfterAnswer, "Answer: " + reference, reference).correct)
        std::abort();
    return 0;
}
