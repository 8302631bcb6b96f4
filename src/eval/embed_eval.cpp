#include "eval/embed_eval.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "eval/results_file.h"
#include "eval/shard.h"
#include "eval/split.h"
#include "eval/svg_plot.h"
#include "io/npz.h"
#include "methods/embed.h"
#include "util/error.h"
#include "util/progress.h"

namespace kvlens {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string read_file(const std::string& path, const std::string& what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(what + " '" + path + "': cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string get_string(const json& j, const char* key, const std::string& where) {
    if (!j.contains(key)) return "";
    if (!j[key].is_string()) throw Error(where + ": '" + key + "' must be a string");
    return j[key].get<std::string>();
}

// A label value as text: strings as they are, numbers (MATH's level) in their JSON form.
std::string label_text(const json& v) {
    return v.is_string() ? v.get<std::string>() : v.dump();
}

}  // namespace

EmbedTask parse_embed_task(const std::string& json_text, const std::string& origin,
                           const std::string& base_dir) {
    json j;
    try {
        j = json::parse(json_text);
    } catch (const json::exception& e) {
        throw Error("embed task '" + origin + "': not valid JSON (" + e.what() + ")");
    }
    const std::string where = "embed task '" + origin + "'";
    if (!j.is_object()) throw Error(where + ": expected a JSON object");
    EmbedTask t;
    t.origin = origin;
    t.name = get_string(j, "name", where);
    if (t.name.empty()) throw Error(where + ": 'name' is missing");
    t.folds = j.value("folds", 5);
    t.seed = j.value("seed", (uint64_t)0);
    if (!j.contains("sources") || !j["sources"].is_array() || j["sources"].empty())
        throw Error(where + ": 'sources' must be a non-empty list");
    std::vector<std::string> labels;
    for (size_t si = 0; si < j["sources"].size(); ++si) {
        const json& s = j["sources"][si];
        const std::string sw = where + " source " + std::to_string(si);
        const std::string file = get_string(s, "file", sw);
        if (file.empty()) throw Error(sw + ": 'file' is missing");
        const fs::path path = fs::path(file).is_absolute() ? fs::path(file) : fs::path(base_dir) / file;
        std::vector<std::string> fields;
        if (s.contains("text_fields")) {
            if (!s["text_fields"].is_array() || s["text_fields"].empty())
                throw Error(sw + ": 'text_fields' must be a non-empty list of field names");
            for (const json& f : s["text_fields"]) fields.push_back(f.get<std::string>());
        } else {
            const std::string tf = get_string(s, "text_field", sw);
            if (tf.empty()) throw Error(sw + ": give 'text_field' or 'text_fields'");
            fields.push_back(tf);
        }
        const std::string label_field = get_string(s, "label_field", sw), fixed = get_string(s, "label", sw);
        if (!label_field.empty() && !fixed.empty())
            throw Error(sw + ": give 'label_field' or 'label', not both");
        if (label_field.empty() && fixed.empty() && !s.contains("text_fields"))
            throw Error(sw + ": give 'label_field' or 'label'");
        const int limit = s.value("limit", 0);
        std::ifstream in(path);
        if (!in) throw Error(sw + ": cannot open '" + path.string() + "'");
        std::string line;
        int lineno = 0, rows = 0;
        while ((limit <= 0 || rows < limit) && std::getline(in, line)) {
            ++lineno;
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            json row;
            try {
                row = json::parse(line);
            } catch (const json::exception& e) {
                throw Error(path.string() + ":" + std::to_string(lineno) + ": not valid JSON (" + e.what() +
                            ")");
            }
            ++rows;
            for (const std::string& f : fields) {
                if (!row.contains(f) || !row[f].is_string())
                    throw Error(path.string() + ":" + std::to_string(lineno) + ": no string field '" + f +
                                "'");
                std::string label = fixed;
                if (!label_field.empty()) {
                    if (!row.contains(label_field))
                        throw Error(path.string() + ":" + std::to_string(lineno) + ": no field '" +
                                    label_field + "'");
                    label = label_text(row[label_field]);
                } else if (fixed.empty()) {
                    label = f;
                }
                t.texts.push_back(row[f].get<std::string>());
                labels.push_back(label);
            }
        }
    }
    std::set<std::string> distinct(labels.begin(), labels.end());
    t.classes.assign(distinct.begin(), distinct.end());
    if (t.classes.size() < 2)
        throw Error(where + ": needs at least 2 classes, found " + std::to_string(t.classes.size()));
    std::map<std::string, int> id;
    for (size_t c = 0; c < t.classes.size(); ++c) id[t.classes[c]] = (int)c;
    for (const std::string& l : labels) t.labels.push_back(id[l]);
    return t;
}

EmbedTask load_embed_task(const std::string& config_path) {
    return parse_embed_task(read_file(config_path, "embed task"), config_path,
                            fs::path(config_path).parent_path().string());
}

Matrix read_npy_matrix(const std::string& path) {
    const std::string b = read_file(path, "npy");
    const std::string where = "npy '" + path + "'";
    if (b.size() < 10 || b.compare(0, 6, "\x93NUMPY") != 0) throw Error(where + ": not a .npy file");
    const int major = (unsigned char)b[6];
    size_t hlen = 0, off = 0;
    if (major == 1) {
        hlen = (unsigned char)b[8] | ((size_t)(unsigned char)b[9] << 8);
        off = 10;
    } else if (major == 2 || major == 3) {
        if (b.size() < 12) throw Error(where + ": truncated header");
        for (int i = 0; i < 4; ++i) hlen |= (size_t)(unsigned char)b[8 + i] << (8 * i);
        off = 12;
    } else {
        throw Error(where + ": unsupported .npy version " + std::to_string(major));
    }
    if (b.size() < off + hlen) throw Error(where + ": truncated header");
    const std::string h = b.substr(off, hlen);
    if (h.find("'<f4'") == std::string::npos) throw Error(where + ": expected float32 ('<f4') data");
    if (h.find("'fortran_order': False") == std::string::npos)
        throw Error(where + ": Fortran order is not supported");
    const size_t sp = h.find("'shape': (");
    if (sp == std::string::npos) throw Error(where + ": no shape in the header");
    Matrix m;
    if (sscanf(h.c_str() + sp + 10, "%d, %d)", &m.rows, &m.cols) != 2 || m.rows < 0 || m.cols < 1)
        throw Error(where + ": expected a 2-D array");
    const size_t need = (size_t)m.rows * m.cols * sizeof(float);
    if (b.size() - off - hlen != need)
        throw Error(where + ": " + std::to_string(b.size() - off - hlen) + " data bytes, expected " +
                    std::to_string(need));
    m.data.resize((size_t)m.rows * m.cols);
    if (need) std::memcpy(m.data.data(), b.data() + off + hlen, need);
    return m;
}

namespace {

struct Rep {
    std::string name, how;
    Matrix x;                   // one row per distinct text
    double sec_per_1000 = NAN;  // measured embedding time
};

// Embeds texts[i] for i in `which` (KV preset, and/or the hidden baseline, from the same pass), rows in that
// order; on_chunk(begin, end) after each chunk of rows, so that a shard can store them as they come. Returns
// the wall time in `seconds`.
void embed_all(Session& session, const std::vector<std::string>& texts, const std::vector<int>& which,
               bool kv, bool hidden, int batch_seqs, Matrix& kv_out, Matrix& hidden_out, double& seconds,
               const std::string& label, const std::function<void(size_t, size_t)>& on_chunk = nullptr) {
    EmbedParams ep;
    ep.kv = kv;
    ep.hidden = hidden;
    ep.batch_seqs = batch_seqs;
    Embedder emb(session, ep);
    kv_out = Matrix{(int)which.size(), emb.kv_width(), {}};
    hidden_out = Matrix{(int)which.size(), emb.hidden_width(), {}};
    Progress prog(label, (int64_t)which.size());
    const auto t0 = std::chrono::steady_clock::now();
    const size_t chunk = (size_t)batch_seqs * 8;
    for (size_t i = 0; i < which.size(); i += chunk) {
        const size_t end = std::min(which.size(), i + chunk);
        std::vector<std::string> part;
        for (size_t k = i; k < end; ++k) part.push_back(texts[which[k]]);
        const std::vector<Embedding> es = emb.embed(part);
        for (size_t k = 0; k < es.size(); ++k) {
            if (!es[k].ok)
                throw Error("eval embed: text " + std::to_string(which[i + k]) +
                            " of texts.jsonl: " + es[k].error);
            kv_out.data.insert(kv_out.data.end(), es[k].kv.begin(), es[k].kv.end());
            hidden_out.data.insert(hidden_out.data.end(), es[k].hidden.begin(), es[k].hidden.end());
        }
        if (on_chunk) on_chunk(i, end);
        prog.add((int64_t)es.size());
    }
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    prog.finish();
}

Matrix random_vectors(int rows, int cols, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd;
    Matrix m;
    m.rows = rows;
    m.cols = cols;
    m.data.resize((size_t)rows * cols);
    for (int i = 0; i < rows; ++i) {
        double norm = 0.0;
        std::vector<double> v(cols);
        for (double& x : v) {
            x = nd(rng);
            norm += x * x;
        }
        norm = std::sqrt(norm);
        for (int t = 0; t < cols; ++t) m.data[(size_t)i * cols + t] = (float)(v[t] / norm);
    }
    return m;
}

Matrix select_rows(const Matrix& x, const std::vector<int>& rows) {
    Matrix m;
    m.rows = (int)rows.size();
    m.cols = x.cols;
    m.data.reserve((size_t)m.rows * m.cols);
    for (int r : rows) m.data.insert(m.data.end(), x.row(r), x.row(r) + x.cols);
    return m;
}

void write_texts(const std::string& out_dir, const std::vector<std::string>& texts) {
    std::string out;
    for (size_t i = 0; i < texts.size(); ++i)
        out += json{{"i", i}, {"text", texts[i]}}.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    write_text_file((fs::path(out_dir) / "texts.jsonl").string(), out);
}

// FNV-1a of the texts in order: the identity names the texts embedded without holding them.
std::string texts_digest(const std::vector<std::string>& texts) {
    char hex[17];
    snprintf(
        hex, sizeof hex, "%016llx",
        (unsigned long long)split_hash(json(texts).dump(-1, ' ', false, json::error_handler_t::replace)));
    return hex;
}

// run.json of a run: the identity (what the embeddings depend on; a shard's directory resumes only the same)
// and the report settings (the tasks' labels and folds, the probe, the baselines), so that eval merge can
// check the shards and compute the report from their rows and this alone.
json embed_run_info(const EmbedEvalParams& p, const std::vector<EmbedTask>& tasks,
                    const std::vector<std::vector<int>>& task_rows, const std::vector<std::string>& texts) {
    json identity = {{"model", p.model_path.empty() ? "" : fs::absolute(p.model_path).string()},
                     {"n_texts", texts.size()},
                     {"texts_fnv1a", texts_digest(texts)},
                     {"hidden", p.hidden}};
    if (parse_capture_source(p.kv_source) != CaptureSource::Graph) identity["kv_source"] = p.kv_source;
    json task_list = json::array();
    for (size_t ti = 0; ti < tasks.size(); ++ti)
        task_list.push_back({{"name", tasks[ti].name},
                             {"folds", tasks[ti].folds},
                             {"seed", tasks[ti].seed},
                             {"classes", tasks[ti].classes},
                             {"labels", tasks[ti].labels},
                             {"rows", task_rows[ti]}});
    json extras = json::array();
    for (const auto& [name, path] : p.extras)
        extras.push_back({{"name", name}, {"path", path}, {"file", fs::absolute(path).string()}});
    return {{"eval", "embed"},
            {"identity", identity},
            {"report",
             {{"tasks", task_list},
              {"probe",
               {{"C", p.probe.C},
                {"standardize", p.probe.standardize},
                {"max_iter", p.probe.max_iter},
                {"tol", p.probe.tol}}},
              {"random", p.random},
              {"extras", extras},
              {"timing_texts", p.timing_texts}}},
            {"model_info", nullptr},
            {"command", p.command_line},
            {"kvlens_version", KVLENS_VERSION},
            {"llama_cpp", KVLENS_LLAMA_ORIGIN},
            {"threads", p.n_threads},
            {"batch_seqs", p.batch_seqs}};
}

// Everything after the embeddings, for one machine and eval merge alike: kv.npy, hidden.npy, the probe per
// task and representation, results.json and report.md. kv, hidden: one row per text (none without a model).
void write_embed_results(const std::string& out_dir, Matrix kv, Matrix hidden, const json& run_info) {
    const json& report = run_info.at("report");
    const json timing = run_info.value("timing", json::object());
    const auto per_1000 = [&](const char* key) {
        const int n = timing.value("texts", 0);
        return n > 0 && timing.contains(key) ? timing[key].get<double>() / n * 1000.0 : NAN;
    };
    const int n_texts = run_info.at("identity").at("n_texts").get<int>();
    std::vector<Rep> reps;
    json model_info = run_info.at("model_info");
    if (!model_info.is_null()) {
        model_info["main_pass_seconds"] = timing.value("main_pass_seconds", 0.0);
        write_npy((fs::path(out_dir) / "kv.npy").string(), kv.data.data(),
                  {(size_t)kv.rows, (size_t)kv.cols});
        reps.push_back({"KV preset (kv_cat, mean pos, mean heads, mean last 4 layers, L2)", "kvlens embed",
                        std::move(kv), per_1000("kv_seconds")});
        if (run_info.at("identity").at("hidden").get<bool>()) {
            write_npy((fs::path(out_dir) / "hidden.npy").string(), hidden.data.data(),
                      {(size_t)hidden.rows, (size_t)hidden.cols});
            reps.push_back({"mean hidden state (same layers, mean pos, mean layers, L2)",
                            "kvlens embed --hidden", std::move(hidden), per_1000("hidden_seconds")});
        }
    }
    for (const json& e : report.at("extras")) {
        const std::string name = e.at("name").get<std::string>(), path = e.at("path").get<std::string>(),
                          file = e.at("file").get<std::string>();
        Rep r{name, path, read_npy_matrix(file), NAN};
        if (r.x.rows != n_texts)
            throw Error("--extra " + name + ": '" + path + "' has " + std::to_string(r.x.rows) +
                        " rows, texts.jsonl has " + std::to_string(n_texts));
        // Optional sidecar FILE.json from the script that made it: {"seconds_per_1000": ...}.
        const fs::path side = fs::path(file).replace_extension(".json");
        if (fs::exists(side)) {
            const json sj = json::parse(read_file(side.string(), "extra sidecar"), nullptr, false);
            if (sj.is_object() && sj.contains("seconds_per_1000"))
                r.sec_per_1000 = sj["seconds_per_1000"].get<double>();
            if (sj.is_object() && sj.contains("how")) r.how = sj["how"].get<std::string>();
        }
        reps.push_back(std::move(r));
    }
    if (reps.empty()) throw Error("eval embed: nothing to evaluate (give -m/--model or --extra)");
    if (report.at("random").get<bool>()) {
        const int w = reps.front().x.cols;
        reps.push_back({"random (seeded Gaussian, L2)", "seed 0", random_vectors(n_texts, w, 0), NAN});
    }
    ProbeParams probe;
    const json& pj = report.at("probe");
    probe.C = pj.at("C").get<double>();
    probe.standardize = pj.at("standardize").get<bool>();
    probe.max_iter = pj.at("max_iter").get<int>();
    probe.tol = pj.at("tol").get<double>();

    json results = json::array();
    std::vector<std::vector<std::string>> rows;
    std::string majorities;
    for (const json& t : report.at("tasks")) {
        const std::string name = t.at("name").get<std::string>();
        const std::vector<std::string> classes = t.at("classes").get<std::vector<std::string>>();
        const std::vector<int> labels = t.at("labels").get<std::vector<int>>();
        const std::vector<int> task_rows = t.at("rows").get<std::vector<int>>();
        std::vector<int> counts(classes.size(), 0);
        for (int l : labels) ++counts[l];
        const double majority = (double)*std::max_element(counts.begin(), counts.end()) / labels.size();
        majorities += std::string(majorities.empty() ? "" : ",") + " " + name + " " + fmt(majority, 3);
        for (const Rep& r : reps) {
            const CvResult cv = cross_validate(select_rows(r.x, task_rows), labels, (int)classes.size(),
                                               t.at("folds").get<int>(), t.at("seed").get<uint64_t>(), probe);
            rows.push_back({name, std::to_string(classes.size()), std::to_string(labels.size()), r.name,
                            std::to_string(r.x.cols), fmt(cv.acc_mean, 3) + " ± " + fmt(cv.acc_std, 3),
                            fmt(cv.f1_mean, 3) + " ± " + fmt(cv.f1_std, 3), fmt(r.sec_per_1000, 1)});
            results.push_back({{"task", name},
                               {"classes", classes},
                               {"n", labels.size()},
                               {"majority", majority},
                               {"representation", r.name},
                               {"how", r.how},
                               {"width", r.x.cols},
                               {"accuracy", cv.accuracy},
                               {"macro_f1", cv.macro_f1},
                               {"accuracy_mean", cv.acc_mean},
                               {"accuracy_std", cv.acc_std},
                               {"macro_f1_mean", cv.f1_mean},
                               {"macro_f1_std", cv.f1_std},
                               {"seconds_per_1000_texts",
                                std::isnan(r.sec_per_1000) ? json(nullptr) : json(r.sec_per_1000)},
                               {"probe_max_iterations", cv.max_iterations},
                               {"probe_converged", cv.all_converged}});
            if (!cv.all_converged)
                fprintf(stderr, "kvlens eval embed: warning: the probe did not converge on %s / %s\n",
                        name.c_str(), r.name.c_str());
        }
    }
    const std::string command = run_info.value("command", std::string());
    json meta = {{"command", command},
                 {"kvlens_version", run_info.at("kvlens_version")},
                 {"llama_cpp", run_info.at("llama_cpp")},
                 {"model", model_info},
                 {"n_texts", n_texts},
                 {"threads", run_info.at("threads")},
                 {"batch_seqs", run_info.at("batch_seqs")},
                 {"probe", pj},
                 {"results", results}};
    write_text_file((fs::path(out_dir) / "results.json").string(), meta.dump(1) + "\n");

    std::string md = "# kvlens eval embed\n\n";
    md += "Command: `" + command + "`\n\n";
    md += "Probe: multinomial logistic regression, L2, C = " + fmt(probe.C, 3) +
          (probe.standardize ? ", features standardised on each training fold" : "") +
          ", stratified k-fold; mean ± std over folds.\n\n";
    md += markdown_table(
        {"task", "classes", "n", "representation", "width", "accuracy", "macro-F1", "s / 1000 texts"}, rows);
    md += "\nMajority-class accuracy:" + majorities + ".\n";
    write_text_file((fs::path(out_dir) / "report.md").string(), md);
    fprintf(stderr, "%s", md.c_str());
}

}  // namespace

void run_embed_eval(const EmbedEvalParams& p) {
    if (p.tasks.empty()) throw Error("eval embed: no --tasks given");
    const ShardSpec shard = parse_shard(p.shard);
    if (shard.active() && p.model_path.empty())
        throw Error(
            "eval embed --shard: a shard embeds its texts; give -m/--model (--extra alone embeds none)");
    std::vector<EmbedTask> tasks;
    for (const std::string& t : p.tasks) tasks.push_back(load_embed_task(t));

    // Distinct texts of all tasks: each is embedded once (MATH-500 problems serve three tasks).
    std::vector<std::string> texts;
    std::map<std::string, int> text_id;
    std::vector<std::vector<int>> task_rows(tasks.size());
    for (size_t ti = 0; ti < tasks.size(); ++ti) {
        for (const std::string& s : tasks[ti].texts) {
            auto it = text_id.emplace(s, (int)texts.size());
            if (it.second) texts.push_back(s);
            task_rows[ti].push_back(it.first->second);
        }
    }
    json run_info = embed_run_info(p, tasks, task_rows, texts);
    // The texts are the samples, each its own id: the same text in two tasks is one sample.
    std::vector<Sample> all(texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
        all[i].index = (int)i;
        all[i].id = texts[i];
    }
    const std::vector<Sample> mine = select_shard(all, shard);
    std::string run_path = (fs::path(p.out_dir) / "run.json").string();
    if (shard.active()) {
        run_info["identity"]["shard"] = to_string(shard);
        run_info["shard"] = shard_run_info(shard, all);
        // Before any file is written: a refused rerun (other settings, another shard) changes nothing.
        run_path = open_run_dir(p.out_dir, run_info["identity"]);
    } else {
        fs::create_directories(p.out_dir);
    }
    write_texts(p.out_dir, texts);
    fprintf(stderr, "kvlens eval embed: %zu tasks, %zu distinct texts -> %s/texts.jsonl\n", tasks.size(),
            texts.size(), p.out_dir.c_str());
    if (p.texts_only) return;

    // A shard stores its rows as they come (a rerun resumes); one machine keeps them for the .npy files.
    std::unique_ptr<ResultsFile> rows;
    if (shard.active())
        rows = std::make_unique<ResultsFile>((fs::path(p.out_dir) / "samples.jsonl").string(), "index");
    Matrix kv, hid;
    if (!p.model_path.empty()) {
        ModelParams mp;
        mp.path = p.model_path;
        Model model(mp);
        const ModelInfo& mi = model.info();
        SessionParams sp;
        sp.n_ctx = p.n_ctx;
        sp.n_seq_max = p.batch_seqs;
        sp.n_threads = p.n_threads;
        sp.capture_source = parse_capture_source(p.kv_source);
        Session session(model, sp);
        json model_info = {{"path", p.model_path},  {"name", mi.name},           {"arch", mi.arch},
                           {"n_layer", mi.n_layer}, {"n_head_kv", mi.n_head_kv}, {"head_dim", mi.head_dim},
                           {"n_embd", mi.n_embd}};
        if (sp.capture_source != CaptureSource::Graph) model_info["kv_source"] = p.kv_source;
        run_info["model_info"] = model_info;
        // Timing: the first `timing_texts` texts of the run (a shard: those of them in it) alone, once per
        // representation, so that each time is its own (the hidden baseline needs the last layer's residual
        // of every token, i.e. output rows for all tokens, which the KV preset does not); eval merge sums the
        // shards' times and counts. Then one pass computes both.
        Matrix scratch, timed_kv, timed_hid;
        std::vector<int> timing, todo;
        for (const Sample& s : mine) {
            if (s.index < p.timing_texts) timing.push_back(s.index);
            if (!rows || !rows->done(s.index)) todo.push_back(s.index);
        }
        json t = {{"texts", timing.size()}};
        double sec = 0;
        if (!timing.empty()) {
            embed_all(session, texts, timing, true, false, p.batch_seqs, timed_kv, scratch, sec, "timing kv");
            t["kv_seconds"] = sec;
            if (p.hidden) {
                embed_all(session, texts, timing, false, true, p.batch_seqs, scratch, timed_hid, sec,
                          "timing hidden");
                t["hidden_seconds"] = sec;
            }
        }
        const auto store = [&](size_t begin, size_t end) {
            if (!rows) return;
            for (size_t k = begin; k < end; ++k) {
                json r = {{"index", todo[k]},
                          {"text", texts[todo[k]]},
                          {"kv", std::vector<float>(kv.row((int)k), kv.row((int)k) + kv.cols)}};
                if (p.hidden) r["hidden"] = std::vector<float>(hid.row((int)k), hid.row((int)k) + hid.cols);
                rows->append(r);
            }
        };
        embed_all(session, texts, todo, true, p.hidden, p.batch_seqs, kv, hid, sec,
                  p.hidden ? "kv + hidden" : "kv", store);
        t["main_pass_seconds"] = sec;
        run_info["timing"] = t;
    }
    write_run_info(run_path, run_info);
    if (shard.active()) {
        fprintf(stderr,
                "kvlens eval embed: shard %s: %zu of %zu texts in %s/samples.jsonl; kvlens eval merge of all "
                "%d shards writes the embeddings and the report\n",
                to_string(shard).c_str(), mine.size(), texts.size(), p.out_dir.c_str(), shard.count);
        return;
    }
    write_embed_results(p.out_dir, std::move(kv), std::move(hid), run_info);
}

void write_embed_merge(const std::string& out_dir, const std::vector<json>& records, json& run_info,
                       const std::vector<json>& shard_infos) {
    const json& identity = run_info.at("identity");
    const bool hidden = identity.at("hidden").get<bool>();
    std::vector<std::string> texts;
    Matrix kv, hid;
    const auto add_row = [](Matrix& m, const json& row, const std::string& text) {
        const std::vector<float> v = row.get<std::vector<float>>();
        if (m.rows == 0) m.cols = (int)v.size();
        if ((int)v.size() != m.cols)
            throw Error("eval merge: the text '" + text.substr(0, 40) + "' has " + std::to_string(v.size()) +
                        " floats, the first " + std::to_string(m.cols));
        m.data.insert(m.data.end(), v.begin(), v.end());
        ++m.rows;
    };
    for (const json& r : records) {
        texts.push_back(r.at("text").get<std::string>());
        add_row(kv, r.at("kv"), texts.back());
        if (hidden) add_row(hid, r.at("hidden"), texts.back());
    }
    // The joined texts must be the run's texts.jsonl, in its order.
    if (texts_digest(texts) != identity.at("texts_fnv1a").get<std::string>())
        throw Error("eval merge: the shards' texts, joined, are not the texts of their run (texts_fnv1a " +
                    identity.at("texts_fnv1a").get<std::string>() + ")");
    // Wall times: each shard timed its part of the run's first timing_texts texts.
    json timing = {{"texts", 0}};
    for (const json& info : shard_infos) {
        const json t = info.value("timing", json::object());
        timing["texts"] = timing["texts"].get<int>() + t.value("texts", 0);
        for (const char* key : {"kv_seconds", "hidden_seconds", "main_pass_seconds"})
            if (t.contains(key)) timing[key] = timing.value(key, 0.0) + t[key].get<double>();
    }
    run_info["timing"] = timing;
    write_texts(out_dir, texts);
    write_embed_results(out_dir, std::move(kv), std::move(hid), run_info);
}

}  // namespace kvlens
