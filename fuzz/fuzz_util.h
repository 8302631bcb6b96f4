// Shared by the fuzz targets: the policy for exceptions, and a scratch file for parsers that read files.
//
// Policy: a parser may refuse its input only with kvlens::Error (whose message names the input and the
// problem, as the CLI and the server print it). Any other exception (a std::out_of_range from a bare .at(),
// a nlohmann::json::type_error from a .get<> on the wrong type, ...) escapes the target, and libFuzzer
// reports it as a crash: that is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace kvlens::fuzz {

inline std::string as_string(const uint8_t* data, size_t size) {
    return std::string(reinterpret_cast<const char*>(data), size);
}

// A per-process file under TMPDIR (or /tmp), rewritten for every input.
inline const std::string& scratch_path(const char* suffix) {
    static const std::string path = [suffix] {
        const char* dir = std::getenv("TMPDIR");
        return std::string(dir && *dir ? dir : "/tmp") + "/kvlens-fuzz-" + std::to_string(getpid()) + suffix;
    }();
    return path;
}

inline void write_file(const std::string& path, const std::string& bytes) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) std::abort();
    if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
    std::fclose(f);
}

// Splits at the first occurrence of sep; without one, everything is the first part.
inline void split_once(const std::string& s, const std::string& sep, std::string& a, std::string& b) {
    const size_t at = s.find(sep);
    a = at == std::string::npos ? s : s.substr(0, at);
    b = at == std::string::npos ? std::string() : s.substr(at + sep.size());
}

}  // namespace kvlens::fuzz
