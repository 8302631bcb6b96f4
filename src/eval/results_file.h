// A resumable JSONL results file: one JSON object per finished sample, keyed by an integer field.
// Opening it reads what an earlier (possibly killed) run wrote: a torn last line is cut off, records are
// checked for duplicates, and later appends skip nothing and repeat nothing.
#pragma once

#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace kvlens {

class ResultsFile {
public:
    // key: the integer field that identifies a sample (e.g. "index"). Throws Error naming the file and line
    // on a malformed record (other than a torn last line) or a duplicate key.
    ResultsFile(const std::string& path, const std::string& key);
    ~ResultsFile();
    ResultsFile(const ResultsFile&) = delete;
    ResultsFile& operator=(const ResultsFile&) = delete;

    bool done(int64_t key) const { return keys_.count(key) != 0; }
    size_t size() const { return records_.size(); }
    const std::vector<nlohmann::json>& records() const { return records_; }
    // Whether opening cut a torn last line (a run killed mid-write).
    bool repaired() const { return repaired_; }

    // Appends one record as one line and flushes it to the OS. Throws on a duplicate key or a write error.
    void append(const nlohmann::json& record);

private:
    std::string path_, key_;
    FILE* f_ = nullptr;
    std::set<int64_t> keys_;
    std::vector<nlohmann::json> records_;
    bool repaired_ = false;
};

}  // namespace kvlens
