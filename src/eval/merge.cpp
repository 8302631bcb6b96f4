#include "eval/merge.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "eval/coe_eval.h"
#include "eval/embed_eval.h"
#include "eval/results_file.h"
#include "eval/router_eval.h"
#include "eval/sample_eval.h"
#include "eval/shard.h"
#include "util/error.h"

namespace kvlens {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// What differs between the kinds of sharded runs: their per-sample results file, the record field a sample's
// shard is hashed from, and what writes the rest of the one-machine directory from the joined records.
struct Kind {
    const char* eval;     // run.json "eval"
    const char* command;  // for messages
    const char* results;  // the per-sample results file
    const char* key;      // hashed to the shard; the index when empty (eval/shard.h)
    const char* indices;  // what a record's index is, for messages
    bool keep_results;    // the merged directory holds the results file (eval embed's go to .npy files)
    // May update run_info, which is written after it.
    void (*write)(const std::string& out_dir, const std::vector<json>& records, json& run_info,
                  const std::vector<json>& shard_infos);
};

void write_coe(const std::string& out_dir, const std::vector<json>& records, json& run_info,
               const std::vector<json>&) {
    const json& report = run_info["report"];
    write_coe_report(out_dir, records, run_info, report.at("bootstrap").get<int>(),
                     report.at("seed").get<uint64_t>(), report.at("dev_fraction").get<double>());
}

void write_sample(const std::string& out_dir, const std::vector<json>& records, json& run_info,
                  const std::vector<json>&) {
    const json& report = run_info["report"];
    SampleEvalParams sp;
    sp.ns = report.at("ns").get<std::vector<int>>();
    sp.scores = report.at("scores").get<std::vector<std::string>>();
    sp.calibration = report.at("calibration").get<std::string>();
    write_sample_report(out_dir, records, run_info, sp);
}

void write_label(const std::string& out_dir, const std::vector<json>& records, json& run_info,
                 const std::vector<json>&) {
    write_router_label_report(out_dir, records, run_info);
}

void write_router(const std::string& out_dir, const std::vector<json>& records, json& run_info,
                  const std::vector<json>&) {
    write_router_eval_report(out_dir, records, run_info);
}

const Kind kKinds[] = {
    {"coe", "eval coe", "samples.jsonl", "id", "line numbers", true, write_coe},
    {"sample", "eval sample", "samples.jsonl", "id", "line numbers", true, write_sample},
    {"embed", "eval embed", "samples.jsonl", "text", "texts.jsonl rows", false, write_embed_merge},
    {"router_label", "router label", "labels.jsonl", "id", "line numbers", true, write_label},
    {"router_eval", "router eval", "eval.jsonl", "id", "line numbers", true, write_router},
};

const Kind* find_kind(const std::string& eval) {
    for (const Kind& k : kKinds)
        if (eval == k.eval) return &k;
    return nullptr;
}

// "an eval coe run", "a router label run".
std::string a_run(const Kind& kind) {
    return std::string(kind.command[0] == 'e' ? "an " : "a ") + kind.command + " run";
}

struct Shard {
    std::string dir;
    json info;  // run.json
    int index = 0, count = 0;
    std::vector<json> records;
};

std::string in_quotes(const std::string& dir) {
    return "'" + dir + "'";
}

json read_run_json(const std::string& dir) {
    const fs::path path = fs::path(dir) / "run.json";
    if (!fs::is_regular_file(path)) throw Error("eval merge: " + in_quotes(dir) + " holds no run.json");
    std::ifstream f(path);
    try {
        return json::parse(f);
    } catch (const std::exception& e) {
        throw Error("eval merge: " + in_quotes(path.string()) + ": invalid JSON (" + e.what() + ")");
    }
}

// Read only: a shard's directory is never repaired or touched by a merge.
std::vector<json> read_records(const std::string& dir, const std::string& name) {
    const fs::path path = fs::path(dir) / name;
    if (!fs::is_regular_file(path)) throw Error("eval merge: " + in_quotes(dir) + " holds no " + name);
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    if (!text.empty() && text.back() != '\n')
        throw Error("eval merge: " + in_quotes(path.string()) +
                    " ends in a torn line (the run was stopped mid-write): rerun that shard, it resumes");
    std::vector<json> records;
    std::istringstream lines(text);
    std::string line;
    for (int n = 1; std::getline(lines, line); ++n) {
        if (line.empty()) continue;
        json r;
        try {
            r = json::parse(line);
        } catch (const std::exception& e) {
            throw Error("eval merge: " + in_quotes(path.string()) + " line " + std::to_string(n) +
                        ": invalid JSON (" + e.what() + ")");
        }
        if (!r.is_object() || !r.contains("index") || !r["index"].is_number_integer())
            throw Error("eval merge: " + in_quotes(path.string()) + " line " + std::to_string(n) +
                        ": no integer field 'index'");
        records.push_back(std::move(r));
    }
    return records;
}

// The first key where two objects differ: "KEY is A there, B in 'FIRST'".
std::string first_difference(const json& a, const json& b, const std::string& first_dir) {
    std::set<std::string> keys;
    for (const auto& [k, v] : a.items()) keys.insert(k);
    for (const auto& [k, v] : b.items()) keys.insert(k);
    for (const std::string& k : keys) {
        const json va = a.value(k, json()), vb = b.value(k, json());
        if (va != vb) return k + " is " + va.dump() + " there, " + vb.dump() + " in " + in_quotes(first_dir);
    }
    return "";
}

std::string sample_key(const json& r, const Kind& kind) {
    const std::string id = r.value(kind.key, std::string());
    return id.empty() ? std::to_string(r["index"].get<int>()) : id;
}

// For messages: a text as a sample's id may be long.
std::string short_key(const std::string& key) {
    return key.size() > 60 ? key.substr(0, 57) + "..." : key;
}

}  // namespace

void run_eval_merge(const MergeParams& p) {
    if (p.dirs.empty()) throw Error("eval merge: no shard directories given");
    // Checked first: a refused merge writes nothing.
    if (fs::exists(p.out_dir) && !(fs::is_directory(p.out_dir) && fs::is_empty(p.out_dir)))
        throw Error("eval merge: -o " + in_quotes(p.out_dir) +
                    " exists and is not empty; merge into a new directory");

    std::vector<Shard> shards;
    for (const std::string& dir : p.dirs) {
        Shard s;
        s.dir = dir;
        s.info = read_run_json(dir);
        const json& id = s.info.value("identity", json());
        if (!id.is_object() || !id.contains("shard") || !s.info.contains("shard") ||
            !s.info.contains("report") || !s.info.contains("eval"))
            throw Error("eval merge: " + in_quotes(dir) + " is not the output of a run with --shard");
        const std::string eval = s.info["eval"].get<std::string>();
        if (find_kind(eval) == nullptr)
            throw Error(
                "eval merge: " + in_quotes(dir) + " is a run of kind '" + eval +
                "'; eval merge joins the shards of eval coe, eval sample, eval embed, router label and "
                "router eval");
        s.index = s.info["shard"].at("index").get<int>();
        s.count = s.info["shard"].at("count").get<int>();
        shards.push_back(std::move(s));
    }

    // One evaluation: the same settings, report settings, shard count and set of samples.
    const Shard& first = shards[0];
    const Kind& kind = *find_kind(first.info["eval"].get<std::string>());
    const auto unsharded = [](json identity) {
        identity.erase("shard");
        return identity;
    };
    const json identity = unsharded(first.info["identity"]);
    for (const Shard& s : shards) {
        const auto refuse = [&](const std::string& what) {
            throw Error("eval merge: " + in_quotes(s.dir) + " " + what + ": not a shard of the same run as " +
                        in_quotes(first.dir));
        };
        if (s.info["eval"] != first.info["eval"])
            refuse("is " + a_run(*find_kind(s.info["eval"].get<std::string>())) + ", " +
                   in_quotes(first.dir) + " " + a_run(kind));
        const std::string diff = first_difference(unsharded(s.info["identity"]), identity, first.dir);
        if (!diff.empty()) refuse("was run with other settings (" + diff + ")");
        const std::string report_diff = first_difference(s.info["report"], first.info["report"], first.dir);
        if (!report_diff.empty()) refuse("has other report settings (" + report_diff + ")");
        if (s.count != first.count)
            refuse("is shard " + s.info["identity"]["shard"].get<std::string>() + ", of another shard count");
        if (s.info["shard"]["all_indices"] != first.info["shard"]["all_indices"])
            refuse("covers other samples (another --limit or --part)");
    }
    const int count = first.count;
    std::vector<const Shard*> by_index(count, nullptr);
    for (const Shard& s : shards) {
        if (by_index[s.index] != nullptr)
            throw Error("eval merge: shard " + std::to_string(s.index) + "/" + std::to_string(count) +
                        " given twice: " + in_quotes(by_index[s.index]->dir) + " and " + in_quotes(s.dir));
        by_index[s.index] = &s;
    }
    std::string missing_shards;
    for (int i = 0; i < count; ++i)
        if (by_index[i] == nullptr)
            missing_shards += (missing_shards.empty() ? "" : ", ") + std::to_string(i);
    if (!missing_shards.empty())
        throw Error("eval merge: shard(s) " + missing_shards + " of " + std::to_string(count) +
                    " missing: give every shard's directory");

    // Every sample of the run exactly once, each in the shard its id hashes to.
    const std::vector<int> all_indices = first.info["shard"]["all_indices"].get<std::vector<int>>();
    const std::set<int> wanted(all_indices.begin(), all_indices.end());
    std::map<int, std::pair<const Shard*, json>> merged;
    for (Shard& s : shards) {
        for (json& r : read_records(s.dir, kind.results)) {
            const int index = r["index"].get<int>();
            if (!wanted.count(index)) continue;  // an earlier run of that directory with a larger limit
            auto it = merged.find(index);
            if (it != merged.end())
                throw Error("eval merge: sample " + std::to_string(index) + " (id '" +
                            short_key(sample_key(r, kind)) + "') is in both " +
                            in_quotes(it->second.first->dir) + " and " + in_quotes(s.dir));
            merged.emplace(index, std::make_pair(&s, std::move(r)));
        }
    }
    // After the overlap check, so that a sample in two shards is named as such.
    for (const auto& [index, v] : merged) {
        const auto& [s, r] = v;
        const int home = shard_of(sample_key(r, kind), count);
        if (home != s->index)
            throw Error("eval merge: " + in_quotes(s->dir) + " (shard " + std::to_string(s->index) + "/" +
                        std::to_string(count) + ") holds sample " + std::to_string(index) + " (id '" +
                        short_key(sample_key(r, kind)) + "') of shard " + std::to_string(home));
    }
    std::string missing;
    int n_missing = 0;
    for (int index : all_indices) {
        if (merged.count(index)) continue;
        if (++n_missing <= 10) missing += (missing.empty() ? "" : ", ") + std::to_string(index);
    }
    if (n_missing > 0)
        throw Error("eval merge: " + std::to_string(n_missing) + " of " + std::to_string(all_indices.size()) +
                    " samples are in no shard (" + kind.indices + " " + missing +
                    (n_missing > 10 ? ", ..." : "") +
                    "): a shard did not finish; rerun it (it resumes), then merge");

    // Dataset order (the index is the line number, and the run's samples are in file order).
    std::vector<json> records;
    for (auto& [index, v] : merged) records.push_back(std::move(v.second));

    json run_info = first.info;
    run_info["identity"] = identity;
    run_info.erase("shard");
    if (run_info.contains("n_samples")) run_info["n_samples"] = records.size();
    run_info["command"] = p.command_line;
    json from = json::array();
    std::vector<json> shard_infos;
    for (const Shard* s : by_index) {
        from.push_back({{"dir", s->dir}, {"command", s->info.value("command", "")}});
        shard_infos.push_back(s->info);
    }
    run_info["merged_from"] = from;

    // A merge that fails while writing (a full disk, a report input the checks above cannot see, such as
    // eval embed's --extra files) removes what it wrote: a refused merge leaves nothing.
    const bool created = !fs::exists(p.out_dir);
    std::error_code ec;
    fs::create_directories(p.out_dir, ec);
    if (!fs::is_directory(p.out_dir))
        throw Error("eval merge: -o " + in_quotes(p.out_dir) + ": cannot create it");
    try {
        if (kind.keep_results) {
            ResultsFile out((fs::path(p.out_dir) / kind.results).string(), "index");
            for (const json& r : records) out.append(r);
        }
        kind.write(p.out_dir, records, run_info, shard_infos);
        // Last: a directory with run.json is a finished merge.
        write_run_info((fs::path(p.out_dir) / "run.json").string(), run_info);
    } catch (...) {
        if (created) {
            fs::remove_all(p.out_dir, ec);
        } else {
            for (const auto& entry : fs::directory_iterator(p.out_dir, ec)) fs::remove_all(entry.path(), ec);
        }
        throw;
    }
}

}  // namespace kvlens
