// Where the built-in dataset configs (data/configs) are, so that an installed kvlens finds its own without
// the source tree. First found:
//   1. the environment's KVLENS_DATA_DIR (the CLI's --data-dir overrides it all);
//   2. next to the installed binary holding this code (the executable, or the Python extension):
//      <its dir>/data/configs          the Python package (kvlens/_kvlens*.so + kvlens/data/configs)
//      <its dir>/../share/kvlens/configs   a `cmake --install` prefix (bin/kvlens + share/kvlens/configs)
//   3. the source tree it was built from.
#pragma once

#include <string>
#include <vector>

namespace kvlens {

std::string find_data_dir();

// The rule itself: env (null: unset), the binaries' paths (most specific first) and the source tree's dir.
std::string find_data_dir(const char* env, const std::vector<std::string>& binaries,
                          const std::string& source_dir);

}  // namespace kvlens
