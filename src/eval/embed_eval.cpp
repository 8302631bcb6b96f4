#include "eval/embed_eval.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

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

// Embeds texts (KV preset, and/or the hidden baseline, from the same pass); returns the wall time.
void embed_all(Session& session, const std::vector<std::string>& texts, bool kv, bool hidden, int batch_seqs,
               Matrix& kv_out, Matrix& hidden_out, double& seconds, const std::string& label) {
    EmbedParams ep;
    ep.kv = kv;
    ep.hidden = hidden;
    ep.batch_seqs = batch_seqs;
    Embedder emb(session, ep);
    kv_out = Matrix{(int)texts.size(), emb.kv_width(), {}};
    hidden_out = Matrix{(int)texts.size(), emb.hidden_width(), {}};
    Progress prog(label, (int64_t)texts.size());
    const auto t0 = std::chrono::steady_clock::now();
    const size_t chunk = (size_t)batch_seqs * 8;
    for (size_t i = 0; i < texts.size(); i += chunk) {
        const std::vector<std::string> part(texts.begin() + i,
                                            texts.begin() + std::min(texts.size(), i + chunk));
        const std::vector<Embedding> es = emb.embed(part);
        for (size_t k = 0; k < es.size(); ++k) {
            if (!es[k].ok)
                throw Error("eval embed: text " + std::to_string(i + k) + " of texts.jsonl: " + es[k].error);
            kv_out.data.insert(kv_out.data.end(), es[k].kv.begin(), es[k].kv.end());
            hidden_out.data.insert(hidden_out.data.end(), es[k].hidden.begin(), es[k].hidden.end());
        }
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

}  // namespace

void run_embed_eval(const EmbedEvalParams& p) {
    if (p.tasks.empty()) throw Error("eval embed: no --tasks given");
    fs::create_directories(p.out_dir);
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
    {
        std::string out;
        for (size_t i = 0; i < texts.size(); ++i)
            out += json{{"i", i}, {"text", texts[i]}}.dump(-1, ' ', false, json::error_handler_t::replace) +
                   "\n";
        write_text_file((fs::path(p.out_dir) / "texts.jsonl").string(), out);
    }
    fprintf(stderr, "kvlens eval embed: %zu tasks, %zu distinct texts -> %s/texts.jsonl\n", tasks.size(),
            texts.size(), p.out_dir.c_str());
    if (p.texts_only) return;

    std::vector<Rep> reps;
    json model_info;
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
        model_info = {{"path", p.model_path},  {"name", mi.name},           {"arch", mi.arch},
                      {"n_layer", mi.n_layer}, {"n_head_kv", mi.n_head_kv}, {"head_dim", mi.head_dim},
                      {"n_embd", mi.n_embd}};
        if (sp.capture_source != CaptureSource::Graph) model_info["kv_source"] = p.kv_source;
        // Timing: the first `timing_texts` texts alone, once per representation, so that each time is its own
        // (the hidden baseline needs the last layer's residual of every token, i.e. output rows for all
        // tokens, which the KV preset does not). Then one pass over all texts computes both.
        Matrix kv, hid, scratch;
        const size_t nt = std::min(texts.size(), (size_t)std::max(0, p.timing_texts));
        const std::vector<std::string> timing(texts.begin(), texts.begin() + nt);
        double t_kv = NAN, t_hidden = NAN, sec = 0;
        if (nt > 0) {
            embed_all(session, timing, true, false, p.batch_seqs, kv, scratch, sec, "timing kv");
            t_kv = sec / nt * 1000.0;
            if (p.hidden) {
                embed_all(session, timing, false, true, p.batch_seqs, scratch, hid, sec, "timing hidden");
                t_hidden = sec / nt * 1000.0;
            }
        }
        embed_all(session, texts, true, p.hidden, p.batch_seqs, kv, hid, sec,
                  p.hidden ? "kv + hidden" : "kv");
        model_info["main_pass_seconds"] = sec;
        write_npy((fs::path(p.out_dir) / "kv.npy").string(), kv.data.data(),
                  {(size_t)kv.rows, (size_t)kv.cols});
        reps.push_back({"KV preset (kv_cat, mean pos, mean heads, mean last 4 layers, L2)", "kvlens embed",
                        std::move(kv), t_kv});
        if (p.hidden) {
            write_npy((fs::path(p.out_dir) / "hidden.npy").string(), hid.data.data(),
                      {(size_t)hid.rows, (size_t)hid.cols});
            reps.push_back({"mean hidden state (same layers, mean pos, mean layers, L2)",
                            "kvlens embed --hidden", std::move(hid), t_hidden});
        }
    }
    for (const auto& [name, path] : p.extras) {
        Rep r{name, path, read_npy_matrix(path), NAN};
        if (r.x.rows != (int)texts.size())
            throw Error("--extra " + name + ": '" + path + "' has " + std::to_string(r.x.rows) +
                        " rows, texts.jsonl has " + std::to_string(texts.size()));
        // Optional sidecar FILE.json from the script that made it: {"seconds_per_1000": ...}.
        const fs::path side = fs::path(path).replace_extension(".json");
        if (fs::exists(side)) {
            const json sj = json::parse(read_file(side.string(), "extra sidecar"), nullptr, false);
            if (sj.is_object() && sj.contains("seconds_per_1000"))
                r.sec_per_1000 = sj["seconds_per_1000"].get<double>();
            if (sj.is_object() && sj.contains("how")) r.how = sj["how"].get<std::string>();
        }
        reps.push_back(std::move(r));
    }
    if (reps.empty()) throw Error("eval embed: nothing to evaluate (give -m/--model or --extra)");
    if (p.random) {
        const int w = reps.front().x.cols;
        reps.push_back(
            {"random (seeded Gaussian, L2)", "seed 0", random_vectors((int)texts.size(), w, 0), NAN});
    }

    json results = json::array();
    std::vector<std::vector<std::string>> rows;
    for (size_t ti = 0; ti < tasks.size(); ++ti) {
        const EmbedTask& t = tasks[ti];
        std::vector<int> counts(t.classes.size(), 0);
        for (int l : t.labels) ++counts[l];
        const double majority = (double)*std::max_element(counts.begin(), counts.end()) / t.labels.size();
        for (const Rep& r : reps) {
            const CvResult cv = cross_validate(select_rows(r.x, task_rows[ti]), t.labels,
                                               (int)t.classes.size(), t.folds, t.seed, p.probe);
            rows.push_back({t.name, std::to_string(t.classes.size()), std::to_string(t.texts.size()), r.name,
                            std::to_string(r.x.cols), fmt(cv.acc_mean, 3) + " ± " + fmt(cv.acc_std, 3),
                            fmt(cv.f1_mean, 3) + " ± " + fmt(cv.f1_std, 3), fmt(r.sec_per_1000, 1)});
            results.push_back({{"task", t.name},
                               {"classes", t.classes},
                               {"n", t.texts.size()},
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
                        t.name.c_str(), r.name.c_str());
        }
    }
    json meta = {{"command", p.command_line},
                 {"kvlens_version", KVLENS_VERSION},
                 {"llama_cpp", KVLENS_LLAMA_ORIGIN},
                 {"model", model_info},
                 {"n_texts", texts.size()},
                 {"threads", p.n_threads},
                 {"batch_seqs", p.batch_seqs},
                 {"probe",
                  {{"C", p.probe.C},
                   {"standardize", p.probe.standardize},
                   {"max_iter", p.probe.max_iter},
                   {"tol", p.probe.tol}}},
                 {"results", results}};
    write_text_file((fs::path(p.out_dir) / "results.json").string(), meta.dump(1) + "\n");

    std::string md = "# kvlens eval embed\n\n";
    md += "Command: `" + p.command_line + "`\n\n";
    md += "Probe: multinomial logistic regression, L2, C = " + fmt(p.probe.C, 3) +
          (p.probe.standardize ? ", features standardised on each training fold" : "") +
          ", stratified k-fold; mean ± std over folds.\n\n";
    md += markdown_table(
        {"task", "classes", "n", "representation", "width", "accuracy", "macro-F1", "s / 1000 texts"}, rows);
    md += "\nMajority-class accuracy:";
    for (size_t ti = 0; ti < tasks.size(); ++ti) {
        std::vector<int> counts(tasks[ti].classes.size(), 0);
        for (int l : tasks[ti].labels) ++counts[l];
        md += std::string(ti ? "," : "") + " " + tasks[ti].name + " " +
              fmt((double)*std::max_element(counts.begin(), counts.end()) / tasks[ti].labels.size(), 3);
    }
    md += ".\n";
    write_text_file((fs::path(p.out_dir) / "report.md").string(), md);
    fprintf(stderr, "%s", md.c_str());
}

}  // namespace kvlens
