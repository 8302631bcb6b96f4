// The resumable results file: torn last lines are cut, duplicates are refused, appends survive reopening.
#include "eval/results_file.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "util/error.h"

using namespace kvlens;

namespace {

std::string temp_path(const std::string& name) {
    const auto dir = std::filesystem::temp_directory_path() / ("kvlens-results-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    const auto p = dir / name;
    std::filesystem::remove(p);
    return p.string();
}

std::string read_all(const std::string& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(ResultsFile, AppendsAndResumes) {
    const std::string p = temp_path("a.jsonl");
    {
        ResultsFile r(p, "index");
        EXPECT_EQ(r.size(), 0u);
        r.append({{"index", 0}, {"x", 1}});
        r.append({{"index", 2}, {"x", 3}});
        EXPECT_THROW(r.append({{"index", 2}}), Error);
    }
    ResultsFile r(p, "index");
    EXPECT_EQ(r.size(), 2u);
    EXPECT_TRUE(r.done(0));
    EXPECT_FALSE(r.done(1));
    EXPECT_TRUE(r.done(2));
    EXPECT_FALSE(r.repaired());
    r.append({{"index", 1}});
    EXPECT_EQ(r.records().back()["index"], 1);
}

TEST(ResultsFile, CutsATornLastLine) {
    const std::string p = temp_path("b.jsonl");
    {
        std::ofstream f(p);
        f << "{\"index\": 0}\n{\"index\": 1, \"text\": \"half";  // killed mid-write
    }
    {
        ResultsFile r(p, "index");
        EXPECT_TRUE(r.repaired());
        EXPECT_EQ(r.size(), 1u);
        EXPECT_FALSE(r.done(1));
        r.append({{"index", 1}, {"text", "whole"}});
    }
    EXPECT_EQ(read_all(p), "{\"index\": 0}\n{\"index\":1,\"text\":\"whole\"}\n");
}

TEST(ResultsFile, RefusesCorruptOrDuplicateRecords) {
    const std::string p = temp_path("c.jsonl");
    {
        std::ofstream f(p);
        f << "{\"index\": 0}\n{not json}\n";
    }
    EXPECT_THROW(ResultsFile(p, "index"), Error);
    {
        std::ofstream f(p);
        f << "{\"index\": 0}\n{\"index\": 0}\n";
    }
    EXPECT_THROW(ResultsFile(p, "index"), Error);
    {
        std::ofstream f(p);
        f << "{\"id\": 0}\n";
    }
    EXPECT_THROW(ResultsFile(p, "index"), Error);
}

}  // namespace

TEST(ResultsFile, ReplacesAllRecordsAtomicallyAndKeepsAppending) {
    const std::string p = temp_path("d.jsonl");
    ResultsFile r(p, "index");
    r.append({{"index", 3}, {"correct", false}});
    r.append({{"index", 1}, {"correct", false}});
    // Another key set, another order or another count: refused, the file untouched.
    const std::string before = read_all(p);
    EXPECT_THROW(r.replace_all({{{"index", 3}}}), Error);
    EXPECT_THROW(r.replace_all({{{"index", 1}}, {{"index", 3}}}), Error);
    EXPECT_THROW(r.replace_all({{{"index", 3}}, {{"index", 2}}}), Error);
    EXPECT_EQ(read_all(p), before);
    r.replace_all({{{"index", 3}, {"correct", true}}, {{"index", 1}, {"correct", false}}});
    EXPECT_TRUE(r.records()[0]["correct"].get<bool>());
    r.append({{"index", 0}});  // the append handle follows the new file
    EXPECT_EQ(read_all(p),
              "{\"correct\":true,\"index\":3}\n{\"correct\":false,\"index\":1}\n{\"index\":0}\n");
    EXPECT_FALSE(std::filesystem::exists(p + ".tmp"));
    ResultsFile again(p, "index");
    EXPECT_EQ(again.size(), 3u);
}
