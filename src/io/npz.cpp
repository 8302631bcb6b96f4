#include "io/npz.h"

#include <zip.h>

#include <cstdlib>
#include <cstring>
#include <fstream>

#include "util/error.h"

namespace kvlens {

std::string npy_bytes(const char* descr, const void* data, size_t elem, const std::vector<size_t>& shape) {
    size_t count = 1;
    std::string dims;  // "()", "(n,)", "(a, b, c)"
    for (size_t i = 0; i < shape.size(); ++i) {
        count *= shape[i];
        dims += (i ? ", " : "") + std::to_string(shape[i]);
    }
    if (shape.size() == 1) dims += ",";
    std::string header =
        std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64, ending in '\n'.
    const size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::string out("\x93NUMPY\x01\x00", 8);
    out += (char)(header.size() & 0xff);
    out += (char)(header.size() >> 8);
    out += header;
    out.append(static_cast<const char*>(data), count * elem);
    return out;
}

NpzWriter::NpzWriter(const std::string& path) : path_(path) {
    int err = 0;
    z_ = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
    if (z_ == nullptr) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, err);
        const std::string msg = zip_error_strerror(&ze);
        zip_error_fini(&ze);
        throw Error("output '" + path + "': cannot create the .npz file: " + msg);
    }
}

NpzWriter::~NpzWriter() {
    try {
        close();
    } catch (...) {
    }
}

void NpzWriter::add_raw(const std::string& name, const char* descr, const void* data, size_t elem,
                        const std::vector<size_t>& shape) {
    const std::string bytes = npy_bytes(descr, data, elem, shape);
    void* copy = malloc(bytes.size());  // libzip frees it (freep = 1) once written
    if (copy == nullptr) throw Error("output '" + path_ + "': out of memory");
    memcpy(copy, bytes.data(), bytes.size());
    zip_source_t* src = zip_source_buffer(z_, copy, bytes.size(), 1);
    if (src == nullptr) {
        free(copy);
        throw Error("output '" + path_ + "': " + zip_strerror(z_));
    }
    const zip_int64_t idx = zip_file_add(z_, (name + ".npy").c_str(), src, ZIP_FL_OVERWRITE);
    if (idx < 0) {
        zip_source_free(src);
        throw Error("output '" + path_ + "': " + zip_strerror(z_));
    }
    zip_set_file_compression(z_, (zip_uint64_t)idx, ZIP_CM_STORE, 0);
}

void NpzWriter::add(const std::string& name, const float* data, const std::vector<size_t>& shape) {
    add_raw(name, "<f4", data, sizeof(float), shape);
}

void NpzWriter::add(const std::string& name, const int32_t* data, const std::vector<size_t>& shape) {
    add_raw(name, "<i4", data, sizeof(int32_t), shape);
}

void NpzWriter::close() {
    if (z_ == nullptr) return;
    struct zip* z = z_;
    z_ = nullptr;
    if (zip_close(z) != 0) {
        const std::string msg = zip_strerror(z);
        zip_discard(z);
        throw Error("output '" + path_ + "': cannot write the .npz file: " + msg);
    }
}

namespace {
void write_npy_raw(const std::string& path, const char* descr, const void* data, size_t elem,
                   const std::vector<size_t>& shape) {
    const std::string bytes = npy_bytes(descr, data, elem, shape);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw Error("npy '" + path + "': cannot open for writing");
    f.write(bytes.data(), (std::streamsize)bytes.size());
    f.close();
    if (!f) throw Error("npy '" + path + "': write failed");
}
}  // namespace

void write_npy(const std::string& path, const float* data, const std::vector<size_t>& shape) {
    write_npy_raw(path, "<f4", data, sizeof(float), shape);
}

void write_npy(const std::string& path, const int32_t* data, const std::vector<size_t>& shape) {
    write_npy_raw(path, "<i4", data, sizeof(int32_t), shape);
}

}  // namespace kvlens
