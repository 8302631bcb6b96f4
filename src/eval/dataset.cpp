#include "eval/dataset.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "methods/fast_slow.h"
#include "util/error.h"

namespace kvlens {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (const std::string& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
}

std::string read_file(const std::string& path, const std::string& what) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(what + " '" + path + "': cannot open (" + std::strerror(errno) + ")");
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// A scalar field as text: strings as they are, numbers as JSON writes them.
std::string field_text(const json& row, const std::string& field, const std::string& where) {
    const auto it = row.find(field);
    if (it == row.end()) throw Error(where + ": missing field '" + field + "'");
    if (it->is_string()) return it->get<std::string>();
    if (it->is_number()) return it->dump();
    throw Error(where + ": field '" + field + "' is " + it->type_name() + ", expected a string or a number");
}

}  // namespace

std::string apply_prompt_template(const std::string& tmpl, const std::string& question) {
    static const std::string kSlot = "{question}";
    std::string out;
    size_t from = 0;
    for (size_t at = tmpl.find(kSlot); at != std::string::npos; at = tmpl.find(kSlot, from)) {
        out += tmpl.substr(from, at - from) + question;
        from = at + kSlot.size();
    }
    return out + tmpl.substr(from);
}

std::string extract_reference(ReferenceRule rule, const std::string& answer) {
    if (rule == ReferenceRule::AsIs) return trim(answer);
    const size_t at = answer.rfind("####");
    if (at == std::string::npos) throw Error("answer has no '####'");
    return trim(answer.substr(at + 4));
}

DatasetConfig parse_dataset_config(const std::string& json_text, const std::string& origin) {
    const std::string where = "dataset config '" + origin + "'";
    json j;
    try {
        j = json::parse(json_text);
    } catch (const json::exception& e) {  // parse_error; out_of_range (406) for 1E750053830
        throw Error(where + ": invalid JSON: " + e.what());
    }
    if (!j.is_object()) throw Error(where + ": expected a JSON object");

    static const std::vector<std::string> kKnown = {
        "name",    "file",       "question_field", "answer_field", "reference",   "prompt_template", "system",
        "matcher", "max_tokens", "id_field",       "description",  "group_field", "hybrid"};
    for (const auto& item : j.items()) {
        if (std::find(kKnown.begin(), kKnown.end(), item.key()) == kKnown.end()) {
            throw Error(where + ": unknown field '" + item.key() + "' (known: " + join(kKnown) + ")");
        }
    }
    auto str = [&](const char* key, bool required, const std::string& fallback) -> std::string {
        if (!j.contains(key)) {
            if (required) throw Error(where + ": missing field '" + key + "'");
            return fallback;
        }
        if (!j[key].is_string()) throw Error(where + ": field '" + key + "' must be a string");
        return j[key].get<std::string>();
    };

    DatasetConfig c;
    c.config_path = origin;
    c.name = str("name", true, "");
    const std::string file = str("file", true, "");
    const fs::path p(file);
    c.file = (p.is_absolute() ? p : fs::path(origin).parent_path() / p).lexically_normal().string();
    c.question_field = str("question_field", true, "");
    c.answer_field = str("answer_field", true, "");
    c.id_field = str("id_field", false, "id");
    c.group_field = str("group_field", false, "");
    const std::string ref = str("reference", false, "as_is");
    if (ref == "as_is") {
        c.reference = ReferenceRule::AsIs;
    } else if (ref == "after_hashes") {
        c.reference = ReferenceRule::AfterHashes;
    } else {
        throw Error(where + ": reference '" + ref + "' is unknown (expected as_is or after_hashes)");
    }
    c.prompt_template = str("prompt_template", true, "");
    if (c.prompt_template.find("{question}") == std::string::npos) {
        throw Error(where + ": prompt_template has no {question}");
    }
    c.system = str("system", false, "");
    str("description", false, "");  // documentation only; must still be a string
    try {
        c.matcher = parse_matcher(str("matcher", true, ""));
    } catch (const Error& e) {
        throw Error(where + ": " + e.what());
    }
    if (j.contains("max_tokens")) {
        if (!j["max_tokens"].is_number_integer() || j["max_tokens"].get<long long>() <= 0 ||
            j["max_tokens"].get<long long>() > 1000000) {
            throw Error(where + ": field 'max_tokens' must be a positive integer");
        }
        c.max_tokens = j["max_tokens"].get<int>();
    }
    if (j.contains("hybrid")) {
        const json& h = j["hybrid"];
        if (!h.is_object())
            throw Error(where + ": field 'hybrid' must be an object {fast, slow, close, marker}");
        static const std::vector<std::string> kHybrid = {"fast", "slow", "close", "marker"};
        for (const auto& item : h.items())
            if (std::find(kHybrid.begin(), kHybrid.end(), item.key()) == kHybrid.end())
                throw Error(where + ": hybrid: unknown field '" + item.key() + "' (known: " + join(kHybrid) +
                            ")");
        auto text = [&](const char* key) {
            if (!h.contains(key) || !h[key].is_string())
                throw Error(where + ": hybrid." + key + " must be a string");
            return h[key].get<std::string>();
        };
        c.hybrid = {text("fast"), text("slow"), text("close"), text("marker")};
        check_prompted_hybrid({c.hybrid.fast, c.hybrid.slow, c.hybrid.close, c.hybrid.marker},
                              where + ": hybrid");
    }
    return c;
}

std::vector<std::string> builtin_dataset_names(const std::string& builtin_dir) {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(builtin_dir, ec)) {
        if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
    }
    std::sort(names.begin(), names.end());
    return names;
}

DatasetConfig load_dataset_config(const std::string& name_or_path, const std::string& builtin_dir) {
    if (ends_with(name_or_path, ".json")) {
        return parse_dataset_config(read_file(name_or_path, "dataset config"), name_or_path);
    }
    const std::vector<std::string> names = builtin_dataset_names(builtin_dir);
    if (std::find(names.begin(), names.end(), name_or_path) == names.end()) {
        const std::string known = names.empty() ? "none found in '" + builtin_dir + "'" : join(names);
        throw Error("dataset '" + name_or_path + "': unknown (built-in: " + known +
                    "; or give the path of a .json config)");
    }
    const std::string path = (fs::path(builtin_dir) / (name_or_path + ".json")).string();
    return parse_dataset_config(read_file(path, "dataset config"), path);
}

std::vector<Sample> load_samples(const DatasetConfig& config, int limit) {
    std::ifstream in(config.file, std::ios::binary);
    if (!in) throw Error("dataset '" + config.file + "': cannot open (" + std::strerror(errno) + ")");
    std::vector<Sample> samples;
    std::string line;
    for (int line_no = 0; std::getline(in, line); ++line_no) {
        if (limit > 0 && (int)samples.size() >= limit) break;
        if (line_no == 0 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // UTF-8 BOM
        if (trim(line).empty()) continue;
        const std::string where = "dataset '" + config.file + "' line " + std::to_string(line_no + 1);
        json row;
        try {
            row = json::parse(line);
        } catch (const json::exception& e) {  // parse_error; out_of_range (406) for 1E750053830
            throw Error(where + ": invalid JSON: " + e.what());
        }
        if (!row.is_object()) throw Error(where + ": expected a JSON object");
        Sample s;
        s.index = line_no;
        if (row.contains(config.id_field)) s.id = field_text(row, config.id_field, where);
        s.question = field_text(row, config.question_field, where);
        if (!config.group_field.empty()) s.group = field_text(row, config.group_field, where);
        try {
            s.reference = extract_reference(config.reference, field_text(row, config.answer_field, where));
        } catch (const Error& e) {
            const std::string msg = e.what();
            throw Error(msg.rfind(where, 0) == 0 ? msg
                                                 : where + ": field '" + config.answer_field + "': " + msg);
        }
        if (s.reference.empty())
            throw Error(where + ": empty reference in field '" + config.answer_field + "'");
        s.prompt = apply_prompt_template(config.prompt_template, s.question);
        samples.push_back(std::move(s));
    }
    if (in.bad()) throw Error("dataset '" + config.file + "': read error");
    return samples;
}

}  // namespace kvlens
