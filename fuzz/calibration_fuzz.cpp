// Calibration file (methods/calibration.h): calibration_from_json on arbitrary text; what it accepts must
// survive a round trip, and its probabilities must lie in [0, 1] for any score.
#include <cmath>
#include <cstdlib>
#include <map>

#include "fuzz_util.h"
#include "methods/calibration.h"
#include "util/error.h"

using namespace kvlens;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Calibration c;
    try {
        c = calibration_from_json(fuzz::as_string(data, size), "fuzz.calibration.json");
    } catch (const Error&) {
        return 0;
    }
    const std::string once = calibration_to_json(c);
    if (calibration_to_json(calibration_from_json(once, "round trip")) != once) std::abort();
    std::map<std::string, double> scores;
    for (const std::string& f : c.features) scores[f] = 0.5;
    scores[c.score] = 0.5;
    for (double x : {-1e300, -1.0, 0.0, 0.5, 1.0, 1e300}) {
        for (auto& [name, v] : scores) v = x;
        double p = 0;
        try {
            p = c.apply(scores);
        } catch (const Error&) {
            continue;
        }
        if (!(p >= 0.0 && p <= 1.0)) std::abort();  // a finite score must give a probability
    }
    return 0;
}
