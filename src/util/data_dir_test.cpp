#include "util/data_dir.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path p = fs::temp_directory_path() /
                 ("kvlens-data-dir-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                  "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    TempDir() { fs::create_directories(p); }
    ~TempDir() { fs::remove_all(p); }
};

}  // namespace

TEST(DataDir, EnvironmentFirst) {
    EXPECT_EQ(kvlens::find_data_dir("/env/configs", {"/x/bin/kvlens"}, "/src/data/configs"), "/env/configs");
}

TEST(DataDir, SourceTreeWhenNothingIsInstalled) {
    TempDir t;
    EXPECT_EQ(kvlens::find_data_dir(nullptr, {(t.p / "bin" / "kvlens").string(), ""}, "/src/data/configs"),
              "/src/data/configs");
    EXPECT_EQ(kvlens::find_data_dir("", {}, "/src/data/configs"), "/src/data/configs");  // empty env = unset
}

TEST(DataDir, InstallPrefixBesideTheExecutable) {
    TempDir t;
    fs::create_directories(t.p / "share" / "kvlens" / "configs");
    EXPECT_EQ(kvlens::find_data_dir(nullptr, {(t.p / "bin" / "kvlens").string()}, "/src/data/configs"),
              (t.p / "share" / "kvlens" / "configs").string());
}

TEST(DataDir, PythonPackageBeforeTheInterpreter) {
    TempDir t;
    fs::create_directories(t.p / "kvlens" / "data" / "configs");
    fs::create_directories(t.p / "share" / "kvlens" / "configs");
    // The extension kvlens/_kvlens.so is asked first; python3's prefix (bin/../share) only after it.
    EXPECT_EQ(kvlens::find_data_dir(
                  nullptr, {(t.p / "kvlens" / "_kvlens.so").string(), (t.p / "bin" / "python3").string()},
                  "/src/data/configs"),
              (t.p / "kvlens" / "data" / "configs").string());
}

TEST(DataDir, ThisBuildFindsTheSourceTreeOrTheEnvironment) {
    // Built tree: nothing installed beside tests/, so the source tree's configs (or KVLENS_DATA_DIR).
    const char* env = std::getenv("KVLENS_DATA_DIR");
    const std::string d = kvlens::find_data_dir();
    if (env && *env)
        EXPECT_EQ(d, env);
    else
        EXPECT_TRUE(fs::exists(fs::path(d) / "arith.json")) << d;
}
