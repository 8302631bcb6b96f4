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
    // Replaces every record (same keys, same order: a relabelling, never a new sample) by writing a temporary
    // file beside it and renaming it over the old one, so that a crash leaves the old file or the new, never
    // a mix. Throws on another key set or a write error, leaving the file as it was.
    void replace_all(const std::vector<nlohmann::json>& records);

private:
    std::string path_, key_;
    FILE* f_ = nullptr;
    std::set<int64_t> keys_;
    std::vector<nlohmann::json> records_;
    bool repaired_ = false;
};

// An evaluation's output directory: created if needed; a run.json already there must record the same
// `identity` (the settings that define the experiment), else Error: a rerun only continues the same run.
// Returns the path of run.json.
std::string open_run_dir(const std::string& out_dir, const nlohmann::json& identity);
// Writes run.json (what produced the directory); strings with invalid UTF-8 are replaced, not refused.
void write_run_info(const std::string& run_path, const nlohmann::json& run_info);

}  // namespace kvlens
