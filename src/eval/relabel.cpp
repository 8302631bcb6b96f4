#include "eval/relabel.h"

#include <cstdio>

#include "eval/results_file.h"

namespace kvlens {

using nlohmann::json;

namespace {

bool relabel_answer(json& a, const std::string& reference, MatcherKind matcher) {
    const MatchResult m = match_answer(matcher, a.at("output").get<std::string>(), reference);
    if (a.at("extracted").get<std::string>() == m.extracted && a.at("matched").get<bool>() == m.correct)
        return false;
    // The label as first recorded stays beside the new one; back at it, the note goes.
    json first =
        a.value("relabelled_from",
                json{{"extracted", a["extracted"]}, {"matched", a["matched"]}, {"correct", a["correct"]}});
    a["extracted"] = m.extracted;
    a["matched"] = m.correct;
    a["correct"] = m.correct && !a.at("truncated").get<bool>();  // cut answers count as wrong
    if (first["extracted"] == a["extracted"] && first["matched"] == a["matched"])
        a.erase("relabelled_from");
    else
        a["relabelled_from"] = first;
    return true;
}

}  // namespace

int relabel_records(std::vector<json>& records, MatcherKind matcher) {
    int changed = 0;
    for (json& r : records) {
        const std::string reference = r.at("reference").get<std::string>();
        if (r.contains("samples")) {
            for (json& a : r["samples"]) changed += relabel_answer(a, reference, matcher);
        } else {
            changed += relabel_answer(r, reference, matcher);
        }
    }
    return changed;
}

int count_relabelled(const std::vector<json>& records) {
    int n = 0;
    for (const json& r : records) {
        if (r.contains("samples")) {
            for (const json& a : r["samples"]) n += a.contains("relabelled_from");
        } else {
            n += r.contains("relabelled_from");
        }
    }
    return n;
}

void relabel_results(ResultsFile& results, MatcherKind matcher, bool rescore, const std::string& what,
                     const std::string& out_dir) {
    std::vector<json> records = results.records();
    const int changed = relabel_records(records, matcher);
    if (changed == 0) return;
    size_t n = 0;
    for (const json& r : records) n += r.contains("samples") ? r["samples"].size() : 1;
    if (rescore) {
        results.replace_all(records);
        fprintf(stderr, "kvlens %s: --rescore: %d of %zu stored answers relabelled by the %s matcher\n",
                what.c_str(), changed, n, to_string(matcher));
    } else {
        fprintf(stderr,
                "kvlens %s: warning: %d of %zu stored answers in '%s' read differently with the current %s "
                "matcher; their labels are kept as recorded: rerun with --rescore to relabel them\n",
                what.c_str(), changed, n, out_dir.c_str(), to_string(matcher));
    }
}

}  // namespace kvlens
