// Checked numbers from parsed JSON. nlohmann's get<int>() / value(key, int) cast a JSON float to an integer,
// and get<float>() narrows a double, without a range check: undefined behaviour for 1e300 in a file field
// (found by fuzz_calibration under UBSan). These check first and throw nlohmann::json::type_error (302),
// which the file parsers already turn into their "missing or mistyped field" error.
#pragma once

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

namespace kvlens {

template <class T>
T json_get(const nlohmann::json& v) {
    using lim = std::numeric_limits<T>;
    auto fail = [&](const char* what) {
        throw nlohmann::json::type_error::create(302, std::string(what) + ", got " + v.dump(), &v);
    };
    if constexpr (std::is_same_v<T, bool>) {
        return v.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
        if (v.is_number_float()) {
            const double d = v.get<double>();
            if (!(d >= (double)lim::min() && d <= (double)lim::max()) || d != std::trunc(d))
                fail("expected an integer in range");
        } else if (v.is_number_integer() && !v.is_number_unsigned()) {
            const int64_t x = v.get<int64_t>();
            if constexpr (std::is_signed_v<T>) {
                if (x < (int64_t)lim::min() || x > (int64_t)lim::max()) fail("integer out of range");
            } else if (x < 0 || (uint64_t)x > (uint64_t)lim::max()) {
                fail("integer out of range");
            }
        } else if (v.is_number_unsigned() && v.get<uint64_t>() > (uint64_t)lim::max()) {
            fail("integer out of range");
        }
        return v.get<T>();
    } else if constexpr (std::is_floating_point_v<T>) {
        const double d = v.get<double>();  // throws for a non-number
        if (std::isfinite(d) && std::fabs(d) > (double)lim::max()) fail("number out of range");
        return (T)d;
    } else {
        return v.get<T>();
    }
}

// obj[key] checked as above, or dflt when absent.
template <class T>
T json_value(const nlohmann::json& obj, const char* key, const T& dflt) {
    const auto it = obj.find(key);
    return it == obj.end() ? dflt : json_get<T>(*it);
}

}  // namespace kvlens
