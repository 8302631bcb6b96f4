// The one exception type of kvlens. Its message is a single line that names the input and the problem,
// e.g. "model 'x.gguf': file is truncated (need 1234 bytes, have 512)". Front ends print it and exit != 0.
#pragma once

#include <stdexcept>
#include <string>

namespace kvlens {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace kvlens
