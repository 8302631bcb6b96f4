#include "eval/router_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/chat_template.h"
#include "engine/model.h"
#include "eval/dataset.h"
#include "eval/results_file.h"
#include "eval/shard.h"
#include "eval/split.h"
#include "eval/svg_plot.h"
#include "methods/fast_slow.h"
#include "util/error.h"
#include "util/progress.h"

namespace kvlens {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// What every router command loads: the questions, the model, its template, a one-sequence session.
struct Setup {
    DatasetConfig cfg;
    std::vector<Sample> all_samples;  // the run's (--limit), before --shard
    std::vector<Sample> samples;      // this run's: its shard of all_samples
    ShardSpec shard;
    std::unique_ptr<Model> model;
    ChatTemplate tmpl = ChatTemplate::Auto;
    PromptedHybrid hybrid;  // active: the model has no thinking template and the dataset makes it hybrid
    int max_tokens = 0;
    std::string part;  // "dev" / "test": only that part of the split (eval/split.h); "": all
    double dev_fraction = 0.3;
};

Setup load_setup(const std::string& model_path, const std::string& dataset, const std::string& data_dir,
                 const std::string& chat_template, int limit, const std::string& shard, int max_tokens,
                 const std::string& part, double dev_fraction) {
    Setup s;
    s.cfg = load_dataset_config(dataset, data_dir);
    if (part != "all" && part != "dev" && part != "test")
        throw Error("--part '" + part + "': expected dev, test or all");
    if (!(dev_fraction > 0 && dev_fraction < 1)) throw Error("--dev-fraction: must be in (0, 1)");
    // The limit chooses the run's questions, the split's part some of them (by id, eval/split.h), the shard
    // a part of those (eval/shard.h).
    s.all_samples = load_samples(s.cfg, limit);
    if (part != "all") {
        s.part = part;
        s.dev_fraction = dev_fraction;
        const Part want = part == "dev" ? Part::Dev : Part::Test;
        std::vector<Sample> kept;
        for (Sample& x : s.all_samples) {
            if (x.id.empty())
                throw Error("dataset '" + s.cfg.name + "' line " + std::to_string(x.index + 1) +
                            ": no id (field '" + s.cfg.id_field + "'), so --part cannot place it");
            if (split_part(x.id, dev_fraction) == want) kept.push_back(std::move(x));
        }
        s.all_samples = std::move(kept);
    }
    if (s.all_samples.empty()) throw Error("dataset '" + s.cfg.name + "': no samples");
    s.shard = parse_shard(shard);
    s.samples = select_shard(s.all_samples, s.shard);
    s.max_tokens = max_tokens > 0 ? max_tokens : s.cfg.max_tokens;
    const ChatTemplate flag = parse_chat_template(chat_template);
    set_verbose(false);
    s.model = std::make_unique<Model>(ModelParams{model_path});
    const ModelInfo& mi = s.model->info();
    s.tmpl = flag == ChatTemplate::Auto ? detect_chat_template(mi.chat_template, mi.arch) : flag;
    if (!has_thinking(s.tmpl)) {
        if (s.cfg.hybrid.close.empty())
            throw Error("model '" + model_path + "': chat template " + to_string(s.tmpl) +
                        " has no thinking mode; fast/slow routing needs a hybrid reasoning model (qwen3, "
                        "deepseek-r1) or a dataset whose config makes the model hybrid by its prompt "
                        "('hybrid': {fast, slow, close, marker}), which '" +
                        s.cfg.name + "' does not");
        s.hybrid = {s.cfg.hybrid.fast, s.cfg.hybrid.slow, s.cfg.hybrid.close, s.cfg.hybrid.marker};
    }
    return s;
}

std::vector<ChatMessage> messages(const DatasetConfig& cfg, const Sample& s) {
    std::vector<ChatMessage> msgs;
    if (!cfg.system.empty()) msgs.push_back({"system", cfg.system});
    msgs.push_back({"user", s.prompt});
    return msgs;
}

// A session holding the longest prompt plus the generation budget and the switch text. The longest of the
// whole run, not of the shard: a shard decodes in the context one machine would.
std::unique_ptr<Session> make_session(const Setup& s, int n_ctx, int n_threads, const std::string& kv_source,
                                      int n_seq = 1, int extra_tokens = 0) {
    size_t longest = 0;
    for (const Sample& x : s.all_samples)
        longest = std::max(
            longest, s.model->tokenize(fast_slow_prompt(s.tmpl, messages(s.cfg, x), s.hybrid), true).size());
    SessionParams sp;
    sp.n_ctx = n_ctx > 0 ? n_ctx : (int)longest + s.max_tokens + 32 + extra_tokens;
    sp.n_batch = std::min(sp.n_ctx, 2048);
    sp.n_threads = n_threads;
    sp.n_seq_max = n_seq;
    sp.capture_source = parse_capture_source(kv_source);
    return std::make_unique<Session>(*s.model, sp);
}

json model_info_json(const ModelInfo& mi) {
    return {{"arch", mi.arch},           {"name", mi.name},         {"n_layer", mi.n_layer},
            {"n_head_kv", mi.n_head_kv}, {"head_dim", mi.head_dim}, {"n_embd", mi.n_embd}};
}

struct ModeRun {
    FastSlowResult r;
    MatchResult m;
    bool correct = false;
    double seconds = 0;
};

ModeRun run_mode(Session& session, const Setup& s, const Sample& x, const RouterFeatures& f,
                 const KvClassifier* clf, ThinkStart start, bool allow_switch, const RoutePolicy& policy,
                 int trace_every = 0, int cut_max_tokens = 0, const ThinkExitPolicy& exit = {}) {
    FastSlowParams fp;
    fp.start = start;
    fp.allow_switch = allow_switch;
    fp.policy = policy;
    fp.exit = exit;
    fp.max_tokens = s.max_tokens;
    fp.trace_every = trace_every;
    fp.cut_max_tokens = cut_max_tokens;
    fp.prompted = s.hybrid;
    ModeRun out;
    const auto t0 = std::chrono::steady_clock::now();
    out.r = run_fast_slow(session, s.tmpl, messages(s.cfg, x), f, clf, fp);
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    session.clear();
    out.m = match_answer(s.cfg.matcher, out.r.answer, x.reference);
    out.correct = out.m.correct && out.r.stop == StopReason::EndOfTurn;  // cut answers count as wrong
    return out;
}

json mode_json(const ModeRun& m) {
    const FastSlowResult& r = m.r;
    json j = {{"output", r.text},
              {"extracted", m.m.extracted},
              {"correct", m.correct},
              {"n_generated", r.n_generated()},
              {"n_sampled", r.n_sampled},
              {"n_switch_tokens", r.n_switch_tokens},
              {"n_dropped", r.n_dropped},
              {"initial", to_string(r.initial)},
              {"final", to_string(r.final)},
              {"switch_at", r.switch_at},
              {"stop", to_string(r.stop)},
              {"seconds", m.seconds},
              {"n_think", r.n_think},
              {"n_answer", r.n_answer},
              {"n_trial", r.n_trial},
              {"n_trials", r.n_trials},
              {"n_decode_calls", r.n_decode_calls},
              {"exit", r.exit}};
    if (!std::isnan(r.prompt_score)) j["prompt_score"] = r.prompt_score;
    if (!r.checks.empty()) {
        json c = json::array();
        for (const auto& [n, d] : r.checks) c.push_back({n, d});
        j["checks"] = c;
    }
    return j;
}

// Records of the samples asked for, in dataset order.
std::vector<json> wanted_records(const ResultsFile& results, const std::vector<Sample>& samples) {
    std::map<int, json> by_index;
    for (const json& r : results.records()) by_index[r["index"].get<int>()] = r;
    std::vector<json> out;
    for (const Sample& s : samples)
        if (by_index.count(s.index)) out.push_back(by_index[s.index]);
    return out;
}

std::string pct(double num, double den) {
    return den > 0 ? fmt(100.0 * num / den, 1) : "-";
}

// Groups in natural order: numbers by value, then other text.
std::vector<std::string> group_order(const std::vector<json>& records) {
    std::vector<std::string> g;
    for (const json& r : records) {
        const std::string v = r.value("group", "");
        if (std::find(g.begin(), g.end(), v) == g.end()) g.push_back(v);
    }
    std::sort(g.begin(), g.end(), [](const std::string& a, const std::string& b) {
        char* ea = nullptr;
        char* eb = nullptr;
        const double x = std::strtod(a.c_str(), &ea), y = std::strtod(b.c_str(), &eb);
        const bool na = !a.empty() && *ea == 0, nb = !b.empty() && *eb == 0;
        if (na && nb) return x < y;
        if (na != nb) return na;
        return a < b;
    });
    return g;
}

// Accuracy and mean generated tokens of each mode, per group and overall.
std::string mode_table(const std::vector<json>& records, const std::vector<std::string>& modes,
                       const std::string& group_name) {
    std::vector<std::string> header = {group_name.empty() ? "group" : group_name, "n"};
    for (const std::string& m : modes) header.push_back(m + " acc %");
    for (const std::string& m : modes) header.push_back(m + " tokens");
    std::vector<std::string> groups = group_order(records);
    groups.push_back("\x01all");
    std::vector<std::vector<std::string>> rows;
    for (const std::string& g : groups) {
        const bool all = g == "\x01all";
        std::vector<double> correct(modes.size()), tokens(modes.size());
        int n = 0;
        for (const json& r : records) {
            if (!all && r.value("group", "") != g) continue;
            ++n;
            for (size_t i = 0; i < modes.size(); ++i) {
                correct[i] += r[modes[i]]["correct"].get<bool>();
                tokens[i] += r[modes[i]]["n_generated"].get<double>();
            }
        }
        std::vector<std::string> row = {all ? "**all**" : g, std::to_string(n)};
        for (size_t i = 0; i < modes.size(); ++i) row.push_back(pct(correct[i], n));
        for (size_t i = 0; i < modes.size(); ++i) row.push_back(n ? fmt(tokens[i] / n, 1) : "-");
        rows.push_back(row);
    }
    return markdown_table(header, rows);
}

std::string label_table(const std::vector<json>& records) {
    std::map<int, int> count;
    for (const json& r : records) ++count[r["label"].get<int>()];
    std::vector<std::vector<std::string>> rows;
    const std::map<int, std::string> meaning = {{0, "fast correct, short"},
                                                {25, "fast correct, long"},
                                                {75, "fast wrong, slow correct"},
                                                {100, "both wrong"}};
    for (const auto& [label, what] : meaning)
        rows.push_back({std::to_string(label), what, std::to_string(count[label]),
                        pct(count[label], (double)records.size())});
    return markdown_table({"label", "meaning", "n", "%"}, rows);
}

// Windows along the answers (label --windows): how many of each label per mode, and how often closing the
// think block gives the right answer, by how far into the slow answer the window is.
std::string window_tables(const std::vector<json>& records, int every) {
    std::map<std::string, std::map<int, int>> count;
    const int kBins = 4;
    std::vector<int> cut_n(kBins), cut_ok(kBins);
    for (const json& r : records) {
        const double slow_len = r["slow"]["n_sampled"].get<double>();
        for (const json& w : r.value("windows", json::array())) {
            ++count[w["mode"].get<std::string>()][w["label"].get<int>()];
            if (!w.contains("cut")) continue;
            const int b = std::min(kBins - 1, (int)(kBins * w["at"].get<double>() / std::max(1.0, slow_len)));
            ++cut_n[b];
            cut_ok[b] += w["cut"]["correct"].get<bool>();
        }
    }
    std::vector<std::vector<std::string>> rows;
    for (const auto& [mode, by_label] : count) {
        std::vector<std::string> row = {mode};
        int total = 0;
        for (int l : {0, 25, 75, 100}) {
            row.push_back(std::to_string(by_label.count(l) ? by_label.at(l) : 0));
            total += by_label.count(l) ? by_label.at(l) : 0;
        }
        row.push_back(std::to_string(total));
        rows.push_back(row);
    }
    std::vector<std::vector<std::string>> cut_rows;
    for (int b = 0; b < kBins; ++b)
        cut_rows.push_back(
            {std::to_string(100 * b / kBins) + "-" + std::to_string(100 * (b + 1) / kBins) + " %",
             std::to_string(cut_n[b]), pct(cut_ok[b], cut_n[b])});
    // The oracle: every question answered the cheapest correct way that routing plus one slow -> fast switch
    // at a window can reach (fast answer, think block closed at a window, or the whole slow answer), by
    // tokens generated; a question no way answers right costs its fast answer. No router does better
    // with checks this far apart.
    double oracle_tokens = 0, oracle_correct = 0, slow_tokens = 0, slow_correct = 0, route_tokens = 0,
           route_correct = 0;
    for (const json& r : records) {
        const json &fast = r["fast"], &slow = r["slow"];
        double best = INFINITY;
        if (fast["correct"].get<bool>()) best = fast["n_generated"].get<double>();
        for (const json& w : r.value("windows", json::array()))
            if (w.contains("cut") && w["cut"]["correct"].get<bool>())
                best = std::min(best, w["at"].get<double>() + w["cut"]["switch_tokens"].get<double>() +
                                          w["cut"]["tokens"].get<double>());
        if (slow["correct"].get<bool>()) best = std::min(best, slow["n_generated"].get<double>());
        oracle_correct += std::isfinite(best);
        oracle_tokens += std::isfinite(best) ? best : fast["n_generated"].get<double>();
        route_tokens += (fast["correct"].get<bool>() ? fast : slow)["n_generated"].get<double>();
        route_correct += fast["correct"].get<bool>() || slow["correct"].get<bool>();
        slow_tokens += slow["n_generated"].get<double>();
        slow_correct += slow["correct"].get<bool>();
    }
    const double n = (double)records.size();
    const std::string oracle =
        markdown_table({"policy", "accuracy %", "mean tokens", "tokens / always-slow"},
                       {{"always slow", pct(slow_correct, n), fmt(slow_tokens / n, 1), "1.000"},
                        {"oracle routing (fast when fast is right)", pct(route_correct, n),
                         fmt(route_tokens / n, 1), fmt(route_tokens / slow_tokens, 3)},
                        {"oracle routing + switching at the windows", pct(oracle_correct, n),
                         fmt(oracle_tokens / n, 1), fmt(oracle_tokens / slow_tokens, 3)}});
    return "Windows every " + std::to_string(every) +
           " sampled tokens (labels: fast-mode windows carry the question's; inside the think block, what "
           "closing it there gives):\n\n" +
           markdown_table({"mode", "label 0", "label 25", "label 75", "label 100", "windows"}, rows) +
           "\nClosing the think block at a window (the cut probe), by position in the slow answer:\n\n" +
           markdown_table({"position", "windows", "cut answer correct %"}, cut_rows) +
           "\nWhat a perfect router could reach on this set (each question answered the cheapest correct way "
           "open to routing plus one slow -> fast switch at these windows; tokens include the switch "
           "text):\n\n" +
           oracle;
}

std::string versions_block(const json& run_info) {
    std::ostringstream md;
    md << "Command: `" << run_info.value("command", "") << "`\n\n"
       << "kvlens " << KVLENS_VERSION << ", llama.cpp " << KVLENS_LLAMA_ORIGIN << "\n\n";
    return md.str();
}

json read_json_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw Error("'" + path + "': cannot open");
    try {
        return json::parse(in);
    } catch (const json::exception& e) {  // parse_error; out_of_range (406) for 1E750053830
        throw Error("'" + path + "': invalid JSON: " + e.what());
    }
}

// The output directory of a label or eval run: run.json (identity = what the dataset and model fix, plus
// `extra` and the shard; a rerun must match it), the resumable results file and the samples still to do.
// run.json also holds what eval merge needs: the kind of run, its report settings and the shard's place.
struct RouterRun {
    json info;
    std::unique_ptr<ResultsFile> results;
    std::vector<const Sample*> todo;
};

RouterRun open_router_run(const Setup& s, const std::string& model_path, const std::string& out_dir,
                          const std::string& kind, const std::string& results_name,
                          const json& extra_identity, const json& extra_info,
                          const std::string& command_line) {
    json identity = {{"model", fs::absolute(model_path).string()},
                     {"dataset", s.cfg.name},
                     {"dataset_file", s.cfg.file},
                     {"prompt_template", s.cfg.prompt_template},
                     {"system", s.cfg.system},
                     {"max_tokens", s.max_tokens},
                     {"template", to_string(s.tmpl)}};
    if (s.hybrid.active())
        identity["hybrid"] = {{"fast", s.hybrid.fast},
                              {"slow", s.hybrid.slow},
                              {"close", s.hybrid.close},
                              {"marker", s.hybrid.marker}};
    if (!s.part.empty()) identity["part"] = {{"part", s.part}, {"dev_fraction", s.dev_fraction}};
    identity.update(extra_identity);
    if (s.shard.active()) identity["shard"] = to_string(s.shard);
    const std::string run_path = open_run_dir(out_dir, identity);
    RouterRun run;
    run.info = {{"identity", identity},
                {"model_info", model_info_json(s.model->info())},
                {"group_field", s.cfg.group_field},
                {"command", command_line},
                {"kvlens_version", KVLENS_VERSION},
                {"llama_cpp", KVLENS_LLAMA_ORIGIN},
                {"eval", kind},
                {"report", json::object()}};
    run.info.update(extra_info);
    if (s.shard.active()) run.info["shard"] = shard_run_info(s.shard, s.all_samples);
    write_run_info(run_path, run.info);
    run.results = std::make_unique<ResultsFile>((fs::path(out_dir) / results_name).string(), "index");
    for (const Sample& x : s.samples)
        if (!run.results->done(x.index)) run.todo.push_back(&x);
    return run;
}

}  // namespace

// ---- label ------------------------------------------------------------------------------------------------

static void router_label(const RouterLabelParams& p) {
    RouterFeatures features;
    try {
        features = parse_router_preset(p.preset);
    } catch (const Error& e) {
        throw Error(std::string("--preset: ") + e.what());
    }
    Setup s = load_setup(p.model_path, p.dataset, p.data_dir, p.chat_template, p.limit, p.shard, p.max_tokens,
                         p.part, p.dev_fraction);
    json extra = {{"preset", to_string(features)}, {"long_tokens", p.long_tokens}};
    if (p.windows > 0) extra.update({{"windows", p.windows}, {"cut_max_tokens", p.cut_max_tokens}});
    if (parse_capture_source(p.kv_source) != CaptureSource::Graph) extra["kv_source"] = p.kv_source;
    RouterRun run = open_router_run(s, p.model_path, p.out_dir, "router_label", "labels.jsonl", extra,
                                    json::object(), p.command_line);
    ResultsFile& results = *run.results;
    const std::vector<const Sample*>& todo = run.todo;
    if (!todo.empty()) {
        const int n_close =
            (int)s.model->tokenize(s.hybrid.active() ? s.hybrid.close : think_close_text(s.tmpl), false, true)
                .size();
        auto session = make_session(s, p.n_ctx, p.n_threads, p.kv_source, p.windows > 0 ? 2 : 1,
                                    p.windows > 0 ? p.cut_max_tokens : 0);
        Progress progress("router label " + s.cfg.name, (int64_t)s.samples.size(),
                          (int64_t)(s.samples.size() - todo.size()));
        for (const Sample* x : todo) {
            const ModeRun fast = run_mode(*session, s, *x, features, nullptr, ThinkStart::Fast, false, {},
                                          p.windows, p.cut_max_tokens);
            const ModeRun slow = run_mode(*session, s, *x, features, nullptr, ThinkStart::Slow, false, {},
                                          p.windows, p.cut_max_tokens);
            const int label =
                difficulty_label(fast.correct, fast.r.n_generated(), slow.correct, p.long_tokens);
            json rec = {{"index", x->index},
                        {"id", x->id},
                        {"group", x->group},
                        {"question", x->question},
                        {"reference", x->reference},
                        {"fast", mode_json(fast)},
                        {"slow", mode_json(slow)},
                        {"label", label},
                        {"features", fast.r.prompt_features}};
            if (p.windows > 0) {
                // Windows along both answers: a fast answer's carry the question's label; inside the think
                // block the label says what closing it there gives (router.h, difficulty_label).
                json windows = json::array();
                for (const ModeRun* m : {&fast, &slow})
                    for (const TraceWindow& w : m->r.trace) {
                        json j = {{"mode", to_string(w.mode)}, {"at", w.at}, {"in_think", w.in_think}};
                        if (w.mode == ThinkChoice::Fast) {
                            j["label"] = label;
                        } else if (w.cut) {
                            const MatchResult cm = match_answer(s.cfg.matcher, w.cut_answer, x->reference);
                            const bool ok = cm.correct && w.cut_stop == StopReason::EndOfTurn;
                            j["cut"] = {{"extracted", cm.extracted},
                                        {"correct", ok},
                                        {"tokens", w.cut_tokens},
                                        {"switch_tokens", n_close}};
                            j["label"] = difficulty_label(ok, w.cut_tokens, slow.correct, p.long_tokens);
                        } else {
                            continue;  // after the think block closed: switching does not act there
                        }
                        j["features"] = w.features;
                        windows.push_back(std::move(j));
                    }
                rec["windows"] = std::move(windows);
            }
            results.append(rec);
            progress.add(1, "label " + std::to_string(label));
        }
        progress.finish();
    }

    write_router_label_report(p.out_dir, wanted_records(results, s.samples), run.info);
}

void write_router_label_report(const std::string& out_dir, const std::vector<json>& records,
                               const json& run_info) {
    const json &id = run_info.at("identity"), &mi = run_info.at("model_info");
    const std::string group_field = run_info.at("group_field").get<std::string>();
    std::ostringstream md;
    md << "# Router labels: " << id.at("dataset").get<std::string>() << " on "
       << mi.at("name").get<std::string>() << " (" << mi.at("arch").get<std::string>() << ")\n\n"
       << versions_block(run_info) << records.size()
       << " questions, greedy, fast mode (empty think block) and slow mode (thinking), max "
       << id.at("max_tokens").get<int>() << " tokens each. Tokens: generated tokens per answer, end-of-turn "
       << "included.\n\n"
       << mode_table(records, {"fast", "slow"}, group_field) << "\n"
       << "Labels (method.md 3; long = at least " << id.at("long_tokens").get<int>() << " tokens):\n\n"
       << label_table(records);
    if (id.contains("windows")) md << "\n" << window_tables(records, id.at("windows").get<int>());
    write_text_file((fs::path(out_dir) / "report.md").string(), md.str());
}

// ---- train ------------------------------------------------------------------------------------------------

static void router_train(const RouterTrainCliParams& p) {
    if (p.label_dirs.empty()) throw Error("router train: no label directory given");
    if (p.windows != "prompt" && p.windows != "all")
        throw Error("--windows '" + p.windows + "': expected prompt or all");
    json first_info;
    std::vector<float> x, y;
    std::vector<int> groups;  // one id per question: its windows stay on one side of the split
    int n_questions = 0;
    std::vector<char> is_window;  // row kinds, for the report
    int width = 0;
    std::string sources;
    for (const std::string& dir : p.label_dirs) {
        const json info = read_json_file((fs::path(dir) / "run.json").string());
        const json& id = info.at("identity");
        if (first_info.is_null()) {
            first_info = info;
        } else {
            for (const char* k : {"template", "preset"})
                if (id.at(k) != first_info["identity"].at(k))
                    throw Error("router train: '" + dir + "' was labelled with " + k + " " + id.at(k).dump() +
                                ", '" + p.label_dirs[0] + "' with " + first_info["identity"].at(k).dump());
            if (info.at("model_info") != first_info.at("model_info"))
                throw Error("router train: '" + dir + "' was labelled on another model than '" +
                            p.label_dirs[0] + "'");
        }
        if (p.windows == "all" && !id.contains("windows"))
            throw Error("router train --windows all: '" + dir +
                        "' has no windows (label it with kvlens router label --windows N)");
        ResultsFile labels((fs::path(dir) / "labels.jsonl").string(), "index");
        int n_windows = 0;
        auto add = [&](const json& r, const json& f, float label, bool window) {
            const std::vector<float> v = f.get<std::vector<float>>();
            if (width == 0) width = (int)v.size();
            if ((int)v.size() != width)
                throw Error("router train: '" + dir + "' index " + r["index"].dump() + ": " +
                            std::to_string(v.size()) + " features, expected " + std::to_string(width));
            x.insert(x.end(), v.begin(), v.end());
            y.push_back(label);
            groups.push_back(n_questions);
            is_window.push_back(window);
        };
        for (const json& r : labels.records()) {
            add(r, r.at("features"), r.at("label").get<float>(), false);
            if (p.windows == "all")
                for (const json& w : r.at("windows")) {
                    add(r, w.at("features"), w.at("label").get<float>(), true);
                    ++n_windows;
                }
            ++n_questions;
        }
        sources += (sources.empty() ? "" : ", ") + dir + " (" + std::to_string(labels.size()) + " questions" +
                   (p.windows == "all" ? ", " + std::to_string(n_windows) + " windows" : "") + ")";
    }
    const json& mi = first_info.at("model_info");
    const json& id = first_info.at("identity");

    TrainReport report;
    RouterFile rf;
    rf.arch = mi.at("arch").get<std::string>();
    rf.n_layer = mi.at("n_layer").get<int>();
    rf.n_head_kv = mi.at("n_head_kv").get<int>();
    rf.head_dim = mi.at("head_dim").get<int>();
    rf.chat_template = id.at("template").get<std::string>();
    rf.features = parse_router_preset(id.at("preset").get<std::string>());
    rf.pool = router_pool_spec(rf.features, rf.n_layer);
    rf.train = p.train;
    rf.source = sources;
    if (width != router_feature_width(rf.n_head_kv, rf.head_dim))
        throw Error("router train: features have " + std::to_string(width) +
                    " floats, the model's KV gives " +
                    std::to_string(router_feature_width(rf.n_head_kv, rf.head_dim)));
    rf.classifier = train_kv_classifier(x, width, y, p.train, &report, &groups);
    rf.report = report;
    save_router(p.out_path, rf);
    // Held-out MSE by row kind: prompts (what routing reads) and windows (what switching reads).
    double se[2] = {0, 0};
    int nk[2] = {0, 0};
    for (int i : report.val_rows) {
        const double d = rf.classifier.predict(x.data() + (size_t)i * width) - y[i];
        se[(int)is_window[i]] += d * d;
        ++nk[(int)is_window[i]];
    }

    std::ostringstream md;
    md << "# Router training\n\nCommand: `" << p.command_line << "`\n\nkvlens " << KVLENS_VERSION << "\n\n"
       << "Data: " << sources << "; model " << mi.at("name").get<std::string>() << " (" << rf.arch << ", "
       << rf.n_layer << " layers, KV " << rf.n_head_kv << " x " << rf.head_dim << "), template "
       << rf.chat_template << ", features " << to_string(rf.features) << " (" << width << " floats).\n\n"
       << markdown_table(
              {"preset", "n train", "n val", "epochs", "best epoch", "train MSE", "val MSE",
               "val MSE of the mean"},
              {{p.train.preset, std::to_string(report.n_train), std::to_string(report.n_val),
                std::to_string(report.epochs_run), std::to_string(report.best_epoch),
                fmt(report.train_mse, 1), fmt(report.val_mse, 1), fmt(report.val_mse_baseline, 1)}})
       << "\nHeld-out rows by kind (the split keeps each question's rows together):\n\n"
       << markdown_table(
              {"rows", "n val", "val MSE"},
              {{"prompts", std::to_string(nk[0]), fmt(nk[0] ? se[0] / nk[0] : NAN, 1)},
               {"windows along answers", std::to_string(nk[1]), fmt(nk[1] ? se[1] / nk[1] : NAN, 1)}});
    write_text_file(p.out_path + ".md", md.str());
    std::printf("router: %s (val MSE %.1f, baseline %.1f, %d epochs)\n", p.out_path.c_str(), report.val_mse,
                report.val_mse_baseline, report.epochs_run);
}

// ---- eval -------------------------------------------------------------------------------------------------

static const std::vector<std::string> kModes = {"always_fast", "always_slow", "routed", "routed_switch"};

// The think-exit rows a run asked for (identity "budgets", "deer"), by their record keys: budget:N, deer:T.
static std::vector<ThinkExitPolicy> exit_policies(const json& id) {
    std::vector<ThinkExitPolicy> out;
    for (const json& b : id.value("budgets", json::array())) {
        ThinkExitPolicy e;
        e.kind = ThinkExit::Budget;
        e.budget = b.get<int>();
        out.push_back(e);
    }
    for (const json& t : id.value("deer", json::array())) {
        ThinkExitPolicy e;
        e.kind = ThinkExit::Deer;
        e.threshold = t.get<float>();
        e.trial_max_tokens = id.value("deer_trial_tokens", e.trial_max_tokens);
        out.push_back(e);
    }
    return out;
}

static std::vector<std::string> eval_modes(const json& id) {
    std::vector<std::string> modes = kModes;
    for (const ThinkExitPolicy& e : exit_policies(id)) modes.push_back(to_string(e));
    return modes;
}

static void router_eval(const RouterEvalParams& p) {
    const RouterFile rf = load_router(p.router_path);
    Setup s = load_setup(p.model_path, p.dataset, p.data_dir, p.chat_template, p.limit, p.shard, p.max_tokens,
                         p.part, p.dev_fraction);
    const ModelInfo& mi = s.model->info();
    check_router_for_model(rf, mi.arch, mi.n_layer, mi.n_head_kv, mi.head_dim, to_string(s.tmpl));
    json extra = {{"router", fs::absolute(p.router_path).string()},
                  {"route_threshold", p.policy.route_threshold},
                  {"delta", p.policy.delta},
                  {"check_every", p.policy.check_every}};
    if (parse_capture_source(p.kv_source) != CaptureSource::Graph) extra["kv_source"] = p.kv_source;
    // Only when asked for: runs without them keep the identity they had.
    for (int b : p.budgets)
        if (b < 1) throw Error("--budgets: " + std::to_string(b) + " must be >= 1");
    for (float t : p.deer_thresholds)
        if (!(t >= 0)) throw Error("--deer: thresholds must be >= 0");
    if (!p.budgets.empty()) extra["budgets"] = p.budgets;
    if (!p.deer_thresholds.empty()) {
        if (p.deer_trial_tokens < 1) throw Error("--deer-trial-tokens: must be >= 1");
        extra["deer"] = p.deer_thresholds;
        extra["deer_trial_tokens"] = p.deer_trial_tokens;
    }
    const std::vector<ThinkExitPolicy> exits = exit_policies(extra);
    // long_tokens sets each record's label, yet is not in the identity (runs before it resume): eval merge
    // refuses shards that differ in it. The router file as typed and its preset are for the report.
    const json info = {{"router_features", to_string(rf.features)},
                       {"router_file", p.router_path},
                       {"router_preset", rf.train.preset},
                       {"report", {{"long_tokens", p.long_tokens}}}};
    RouterRun run =
        open_router_run(s, p.model_path, p.out_dir, "router_eval", "eval.jsonl", extra, info, p.command_line);
    ResultsFile& results = *run.results;
    const std::vector<const Sample*>& todo = run.todo;
    if (!todo.empty()) {
        // DEER's trials decode on a second sequence: the close and a trial answer beside the question's.
        const bool deer = !p.deer_thresholds.empty();
        auto session = make_session(s, p.n_ctx, p.n_threads, p.kv_source, deer ? 2 : 1,
                                    deer ? p.deer_trial_tokens + 16 : 0);
        Progress progress("router eval " + s.cfg.name, (int64_t)s.samples.size(),
                          (int64_t)(s.samples.size() - todo.size()));
        const KvClassifier* clf = &rf.classifier;
        for (const Sample* x : todo) {
            const ModeRun runs[4] = {
                run_mode(*session, s, *x, rf.features, clf, ThinkStart::Fast, false, p.policy),
                run_mode(*session, s, *x, rf.features, clf, ThinkStart::Slow, false, p.policy),
                run_mode(*session, s, *x, rf.features, clf, ThinkStart::Auto, false, p.policy),
                run_mode(*session, s, *x, rf.features, clf, ThinkStart::Auto, true, p.policy)};
            json rec = {{"index", x->index},
                        {"id", x->id},
                        {"group", x->group},
                        {"question", x->question},
                        {"reference", x->reference},
                        {"prompt_score", runs[0].r.prompt_score},
                        {"label", difficulty_label(runs[0].correct, runs[0].r.n_generated(), runs[1].correct,
                                                   p.long_tokens)}};
            for (int i = 0; i < 4; ++i) rec[kModes[i]] = mode_json(runs[i]);
            for (const ThinkExitPolicy& e : exits)
                rec[to_string(e)] = mode_json(run_mode(*session, s, *x, rf.features, nullptr,
                                                       ThinkStart::Slow, false, p.policy, 0, 0, e));
            results.append(rec);
            progress.add(1);
        }
        progress.finish();
    }

    write_router_eval_report(p.out_dir, wanted_records(results, s.samples), run.info);
}

void write_router_eval_report(const std::string& out_dir, const std::vector<json>& records,
                              const json& run_info) {
    const json &id = run_info.at("identity"), &mi = run_info.at("model_info");
    const std::string dataset = id.at("dataset").get<std::string>(),
                      group_field = run_info.at("group_field").get<std::string>();
    RoutePolicy policy;
    policy.route_threshold = id.at("route_threshold").get<float>();
    policy.delta = id.at("delta").get<float>();
    policy.check_every = id.at("check_every").get<int>();
    const double n = (double)records.size();
    const std::vector<std::string> modes = eval_modes(id);
    // Every mode overall.
    std::vector<std::vector<std::string>> rows;
    std::vector<Series> series;
    double slow_tokens = 0, slow_acc = 0, slow_seconds = 0;
    for (const json& r : records) slow_tokens += r["always_slow"]["n_generated"].get<double>();
    for (const json& r : records) slow_acc += r["always_slow"]["correct"].get<bool>();
    for (const json& r : records) slow_seconds += r["always_slow"]["seconds"].get<double>();
    for (const std::string& m : modes) {
        double correct = 0, tokens = 0, trial = 0, seconds = 0, fast_routes = 0, switches = 0;
        for (const json& r : records) {
            const json& j = r[m];
            correct += j["correct"].get<bool>();
            tokens += j["n_generated"].get<double>();
            trial += j.value("n_trial", 0);
            seconds += j["seconds"].get<double>();
            fast_routes += j["initial"] == "fast";
            switches += j["switch_at"].get<int>() >= 0;
        }
        rows.push_back({m, fmt(100 * correct / n, 1), fmt(100 * (correct - slow_acc) / n, 1),
                        fmt(tokens / n, 1), fmt(trial / n, 1), fmt(tokens / slow_tokens, 3), fmt(seconds, 1),
                        fmt(seconds / slow_seconds, 3), pct(fast_routes, n), pct(switches, n)});
        Series sr;
        sr.label = m;
        sr.x = {tokens / n};
        sr.y = {100 * correct / n};
        sr.markers = true;
        series.push_back(sr);
    }
    // The classifier on this set: labels from the always-fast and always-slow runs.
    double se = 0;
    int tp = 0, fp = 0, tn = 0, fn = 0;  // positive = hard (label >= 50)
    for (const json& r : records) {
        const double d = r["prompt_score"].get<double>(), l = r["label"].get<double>();
        se += (d - l) * (d - l);
        const bool pred_hard = d >= policy.route_threshold, hard = l >= 50;
        tp += pred_hard && hard;
        fp += pred_hard && !hard;
        tn += !pred_hard && !hard;
        fn += !pred_hard && hard;
    }
    // Routing on the prompt alone at other thresholds, from the same runs: a question routed to fast mode
    // gets exactly the always-fast answer (same sequence, greedy), otherwise the always-slow one.
    Series sweep;
    sweep.label = "routed, threshold 0..100";
    sweep.dashed = true;
    std::vector<std::vector<std::string>> sweep_rows;
    for (int t = 0; t <= 100; t += 5) {
        double correct = 0, tokens = 0;
        for (const json& r : records) {
            const json& j = r["prompt_score"].get<double>() < t ? r["always_fast"] : r["always_slow"];
            correct += j["correct"].get<bool>();
            tokens += j["n_generated"].get<double>();
        }
        sweep.x.push_back(tokens / n);
        sweep.y.push_back(100 * correct / n);
        if (t % 10 == 0)
            sweep_rows.push_back({std::to_string(t), fmt(100 * correct / n, 1),
                                  fmt(100 * (correct - slow_acc) / n, 1), fmt(tokens / n, 1),
                                  fmt(tokens / slow_tokens, 3)});
    }
    series.insert(series.begin(), sweep);
    PlotSpec spec;
    spec.title = "Accuracy vs generated tokens (" + dataset + ")";
    spec.x_label = "mean generated tokens per question";
    spec.y_label = "accuracy (%)";
    spec.x_min = 0;
    write_text_file((fs::path(out_dir) / "accuracy-vs-tokens.svg").string(), svg_line_plot(spec, series));

    std::ostringstream md;
    md << "# Fast/slow routing: " << dataset << " on " << mi.at("name").get<std::string>() << " ("
       << mi.at("arch").get<std::string>() << ")\n\n"
       << versions_block(run_info) << records.size() << " questions, greedy, max "
       << id.at("max_tokens").get<int>() << " sampled tokens per answer. Router `"
       << run_info.at("router_file").get<std::string>() << "` (features "
       << run_info.at("router_features").get<std::string>() << ", preset "
       << run_info.at("router_preset").get<std::string>() << "); route to fast when d < "
       << fmt(policy.route_threshold, 0) << "; switch once, checked every " << policy.check_every
       << " tokens: slow -> fast when d < " << fmt(policy.route_threshold - policy.delta, 0)
       << " inside the think block, fast -> slow when d > " << fmt(policy.route_threshold + policy.delta, 0)
       << ". Tokens count everything the model generated, before and after a switch, plus the appended "
          "switch or exit text and, for deer:T (at each line break inside the think block a greedy trial "
          "answer after a close on a copied sequence; exit when its mean token probability > T), every "
          "trial token, kept or dropped (also shown alone as trial tokens). budget:N closes the think block "
          "after N think tokens. Switched %: the think block was closed by the switch or the exit.\n\n"
       << markdown_table({"mode", "accuracy %", "vs always-slow (points)", "mean tokens", "mean trial tokens",
                          "tokens / always-slow", "wall-clock s", "wall-clock / always-slow", "routed fast %",
                          "switched %"},
                         rows)
       << "\nRouting on the prompt at other thresholds (computed from the always-fast and always-slow runs: "
          "a question routed to fast gets exactly the always-fast answer):\n\n"
       << markdown_table({"route threshold", "accuracy %", "vs always-slow (points)", "mean tokens",
                          "tokens / always-slow"},
                         sweep_rows)
       << "\nPer " << (group_field.empty() ? "group" : group_field) << ":\n\n"
       << mode_table(records, modes, group_field) << "\n"
       << "Classifier on this set (labels from the always-fast and always-slow runs): MSE "
       << fmt(n > 0 ? se / n : NAN, 1) << "; at threshold " << fmt(policy.route_threshold, 0)
       << " (hard = label >= 50):\n\n"
       << markdown_table({"", "predicted easy", "predicted hard"},
                         {{"easy (label < 50)", std::to_string(tn), std::to_string(fp)},
                          {"hard (label >= 50)", std::to_string(fn), std::to_string(tp)}})
       << "\nLabels:\n\n"
       << label_table(records) << "\n![accuracy vs tokens](accuracy-vs-tokens.svg)\n";
    write_text_file((fs::path(out_dir) / "report.md").string(), md.str());
}

// ---- entry points -----------------------------------------------------------------------------------------

// The records are our own files read back; a field missing or of the wrong type means another kvlens version
// (or a hand edit) wrote them. Name the files instead of failing with a bare JSON message.
namespace {
template <class F>
void naming_records(const std::string& where, F&& f) {
    try {
        f();
    } catch (const json::exception& e) {
        throw Error(where + ": a record lacks a field or has another type than expected (" + e.what() +
                    "); was it written by another kvlens version? Run again into a new directory");
    }
}
}  // namespace

void run_router_label(const RouterLabelParams& p) {
    naming_records("'" + (fs::path(p.out_dir) / "labels.jsonl").string() + "'", [&] { router_label(p); });
}

void run_router_train(const RouterTrainCliParams& p) {
    std::string dirs;
    for (const std::string& d : p.label_dirs) dirs += (dirs.empty() ? "'" : ", '") + d + "/labels.jsonl'";
    naming_records(dirs, [&] { router_train(p); });
}

void run_router_eval(const RouterEvalParams& p) {
    naming_records("'" + (fs::path(p.out_dir) / "eval.jsonl").string() + "'", [&] { router_eval(p); });
}

}  // namespace kvlens
