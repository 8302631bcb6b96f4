#include "eval/results_file.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "util/error.h"

namespace kvlens {

ResultsFile::ResultsFile(const std::string& path, const std::string& key) : path_(path), key_(key) {
    std::string text;
    if (std::filesystem::exists(path)) {
        std::ifstream in(path, std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        text = ss.str();
        // A run killed mid-write leaves a last line without its newline: drop it, the sample is redone.
        const size_t end = text.rfind('\n');
        const size_t keep = end == std::string::npos ? 0 : end + 1;
        if (keep != text.size()) {
            text.resize(keep);
            std::filesystem::resize_file(path, keep);
            repaired_ = true;
        }
    }
    std::istringstream lines(text);
    std::string line;
    for (int n = 1; std::getline(lines, line); ++n) {
        if (line.empty()) continue;
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const std::exception& e) {
            throw Error("results '" + path + "' line " + std::to_string(n) + ": invalid JSON (" + e.what() +
                        ")");
        }
        if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer())
            throw Error("results '" + path + "' line " + std::to_string(n) + ": no integer field '" + key +
                        "'");
        if (!keys_.insert(j[key].get<int64_t>()).second)
            throw Error("results '" + path + "' line " + std::to_string(n) + ": duplicate " + key + " " +
                        std::to_string(j[key].get<int64_t>()));
        records_.push_back(std::move(j));
    }
    f_ = fopen(path.c_str(), "ab");
    if (f_ == nullptr) throw Error("results '" + path + "': cannot open for appending");
}

ResultsFile::~ResultsFile() {
    if (f_) fclose(f_);
}

void ResultsFile::append(const nlohmann::json& record) {
    const int64_t k = record.at(key_).get<int64_t>();
    if (keys_.count(k))
        throw Error("results '" + path_ + "': " + key_ + " " + std::to_string(k) + " written twice");
    // One fwrite of the whole line, then a flush: a kill leaves at most one torn line, which reopening cuts.
    // Model outputs may hold invalid UTF-8 (a token can be part of a character): replace, never fail.
    const std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (fwrite(line.data(), 1, line.size(), f_) != line.size() || fflush(f_) != 0)
        throw Error("results '" + path_ + "': write failed");
    keys_.insert(k);
    records_.push_back(record);
}

void ResultsFile::replace_all(const std::vector<nlohmann::json>& records) {
    if (records.size() != records_.size())
        throw Error("results '" + path_ + "': a rewrite must keep its " + std::to_string(records_.size()) +
                    " records");
    std::string text;
    for (size_t i = 0; i < records.size(); ++i) {
        if (records[i].at(key_) != records_[i].at(key_))
            throw Error("results '" + path_ + "': a rewrite must keep the records' " + key_ + "s in order");
        text += records[i].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    const std::string tmp = path_ + ".tmp";
    FILE* out = fopen(tmp.c_str(), "wb");
    if (out == nullptr) throw Error("results '" + tmp + "': cannot open for writing");
    const bool ok = fwrite(text.data(), 1, text.size(), out) == text.size() && fflush(out) == 0;
    if (fclose(out) != 0 || !ok) {
        std::remove(tmp.c_str());
        throw Error("results '" + tmp + "': write failed");
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path_, ec);
    if (ec) {
        std::remove(tmp.c_str());
        throw Error("results '" + path_ + "': cannot replace it (" + ec.message() + ")");
    }
    // The append handle still points at the old, now unlinked file.
    fclose(f_);
    f_ = fopen(path_.c_str(), "ab");
    if (f_ == nullptr) throw Error("results '" + path_ + "': cannot open for appending");
    records_ = records;
}

std::string open_run_dir(const std::string& out_dir, const nlohmann::json& identity) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (!fs::is_directory(out_dir)) throw Error("--out '" + out_dir + "': cannot create the directory");
    const std::string run_path = (fs::path(out_dir) / "run.json").string();
    if (fs::exists(run_path)) {
        std::ifstream f(run_path);
        nlohmann::json prev;
        try {
            prev = nlohmann::json::parse(f);
        } catch (const std::exception& e) {
            throw Error("'" + run_path + "': invalid JSON (" + e.what() + ")");
        }
        if (prev.value("identity", nlohmann::json()) != identity)
            throw Error("--out '" + out_dir + "' holds a run with other settings (" + run_path +
                        "); use another directory");
    }
    return run_path;
}

void write_run_info(const std::string& run_path, const nlohmann::json& run_info) {
    std::ofstream f(run_path);
    f << run_info.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    if (!f) throw Error("'" + run_path + "': write failed");
}

}  // namespace kvlens
