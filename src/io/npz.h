// Writes NumPy .npz archives (a zip of .npy files, stored uncompressed) with libzip, for offline analysis.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct zip;

namespace kvlens {

class NpzWriter {
public:
    explicit NpzWriter(const std::string& path);  // throws Error naming the path
    ~NpzWriter();
    NpzWriter(const NpzWriter&) = delete;
    NpzWriter& operator=(const NpzWriter&) = delete;

    // Arrays are C-ordered; an empty shape is a scalar. The data is copied.
    void add(const std::string& name, const float* data, const std::vector<size_t>& shape);
    void add(const std::string& name, const int32_t* data, const std::vector<size_t>& shape);
    // Writes the archive; called by the destructor if not before (errors are then lost).
    void close();

private:
    void add_raw(const std::string& name, const char* descr, const void* data, size_t elem,
                 const std::vector<size_t>& shape);
    std::string path_;
    struct zip* z_ = nullptr;
};

// The .npy v1.0 bytes of an array (header + data), exposed for tests.
std::string npy_bytes(const char* descr, const void* data, size_t elem, const std::vector<size_t>& shape);

// Writes one array as a plain .npy file (float32 '<f4' or int32 '<i4'), replacing it.
// Throws Error naming the path.
void write_npy(const std::string& path, const float* data, const std::vector<size_t>& shape);
void write_npy(const std::string& path, const int32_t* data, const std::vector<size_t>& shape);

}  // namespace kvlens
