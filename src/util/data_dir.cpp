#include "util/data_dir.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <system_error>

namespace fs = std::filesystem;

namespace kvlens {

std::string find_data_dir(const char* env, const std::vector<std::string>& binaries,
                          const std::string& source_dir) {
    if (env && *env) return env;
    for (const std::string& b : binaries) {
        if (b.empty()) continue;
        const fs::path dir = fs::path(b).parent_path();
        for (const fs::path& c :
             {dir / "data" / "configs", dir.parent_path() / "share" / "kvlens" / "configs"}) {
            std::error_code ec;
            if (fs::is_directory(c, ec)) return c.lexically_normal().string();
        }
    }
    return source_dir;
}

std::string find_data_dir() {
    std::vector<std::string> binaries;
    // The object this code is linked into: the Python extension when loaded by Python, else the executable
    // (whose dli_fname may be argv[0], hence /proc/self/exe as well).
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(static_cast<std::string (*)()>(&find_data_dir)), &info) &&
        info.dli_fname && fs::path(info.dli_fname).is_absolute())
        binaries.emplace_back(info.dli_fname);
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) binaries.push_back(exe.string());
    return find_data_dir(std::getenv("KVLENS_DATA_DIR"), binaries, KVLENS_SOURCE_DATA_DIR);
}

}  // namespace kvlens
