#include "eval/coe_eval.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <tuple>

#include "engine/generate.h"
#include "eval/metrics.h"
#include "eval/results_file.h"
#include "eval/svg_plot.h"
#include "methods/coe.h"
#include "util/error.h"
#include "util/progress.h"

namespace kvlens {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& coe_report_scores() {
    static const std::vector<std::string> names = {"kv_coe_r", "kv_coe_c", "k_coe_r",    "k_coe_c",
                                                   "v_coe_r",  "v_coe_c",  "hs_coe_r",   "hs_coe_c",
                                                   "max_prob", "inv_ppl",  "inv_entropy"};
    return names;
}

static std::string score_label(const std::string& s) {
    static const std::map<std::string, std::string> labels = {
        {"kv_coe_r", "KV-CoE-R (K;V)"},    {"kv_coe_c", "KV-CoE-C (K;V)"},    {"k_coe_r", "KV-CoE-R (K)"},
        {"k_coe_c", "KV-CoE-C (K)"},       {"v_coe_r", "KV-CoE-R (V)"},       {"v_coe_c", "KV-CoE-C (V)"},
        {"hs_coe_r", "HS-CoE-R (hidden)"}, {"hs_coe_c", "HS-CoE-C (hidden)"}, {"max_prob", "mean max-prob"},
        {"inv_ppl", "1/perplexity"},       {"inv_entropy", "1/entropy"}};
    auto it = labels.find(s);
    return it == labels.end() ? s : it->second;
}

// The settings that must match for a resumed run to continue the same experiment.
static json run_identity(const CoeEvalParams& p, const DatasetConfig& cfg, int max_tokens) {
    return {{"model", fs::absolute(p.model_path).string()},
            {"dataset", cfg.name},
            {"dataset_file", cfg.file},
            {"prompt_template", cfg.prompt_template},
            {"system", cfg.system},
            {"matcher", to_string(cfg.matcher)},
            {"max_tokens", max_tokens},
            {"template", p.chat_template},
            {"think", p.think}};
}

// The K/V source joins the identity only when it is not the default, so that existing runs still resume.
static json with_kv_source(json identity, const std::string& kv_source) {
    if (parse_capture_source(kv_source) != CaptureSource::Graph) identity["kv_source"] = kv_source;
    return identity;
}

void run_coe_eval(const CoeEvalParams& p) {
    const DatasetConfig cfg = load_dataset_config(p.dataset, p.data_dir);
    const std::vector<Sample> samples = load_samples(cfg, p.limit);
    if (samples.empty()) throw Error("dataset '" + cfg.name + "': no samples");
    const int max_tokens = p.max_tokens > 0 ? p.max_tokens : cfg.max_tokens;
    if (p.parallel < 1) throw Error("--parallel: must be >= 1");
    const ChatTemplate tmpl_flag = parse_chat_template(p.chat_template);
    const ThinkMode think = parse_think_mode(p.think);

    // A rerun continues only the same experiment.
    const json identity = with_kv_source(run_identity(p, cfg, max_tokens), p.kv_source);
    const std::string run_path = open_run_dir(p.out_dir, identity);
    ResultsFile results((fs::path(p.out_dir) / "samples.jsonl").string(), "index");
    std::vector<const Sample*> todo;
    for (const Sample& s : samples)
        if (!results.done(s.index)) todo.push_back(&s);

    set_verbose(false);
    Model model(ModelParams{p.model_path});
    const ModelInfo& mi = model.info();
    const ChatTemplate tmpl =
        tmpl_flag == ChatTemplate::Auto ? detect_chat_template(mi.chat_template, mi.arch) : tmpl_flag;

    // Measured accumulator state of one sequence at 100 and 2000 producer positions, next to the bytes
    // the hidden-state trajectory would take if stored per token.
    json memory;
    for (int n : {100, 2000}) {
        KvCoe kv(mi, 0, 1);
        HiddenCoe hs(mi, 0, 1);
        std::vector<float> row(std::max(mi.kv_width(), mi.n_embd), 0.5f);
        for (int t = 0; t < n; ++t) {
            for (int l = 0; l < mi.n_layer; ++l) {
                kv.pool().add_k(l, row.data());
                kv.pool().add_v(l, row.data());
                hs.add_row(l, row.data());
            }
            hs.add_row(-1, row.data());
        }
        memory[std::to_string(n)] = {
            {"kv_coe_state_bytes", kv.state_bytes()},
            {"hs_coe_state_bytes", hs.state_bytes()},
            {"hidden_trajectory_bytes", hidden_trajectory_bytes(mi.n_layer, mi.n_embd, n)}};
    }

    json run_info = {{"identity", identity},
                     {"model_info",
                      {{"arch", mi.arch},
                       {"name", mi.name},
                       {"n_layer", mi.n_layer},
                       {"n_embd", mi.n_embd},
                       {"n_head_kv", mi.n_head_kv},
                       {"head_dim", mi.head_dim}}},
                     {"chat_template_used", to_string(tmpl)},
                     {"n_samples", samples.size()},
                     {"command", p.command_line},
                     {"kvlens_version", KVLENS_VERSION},
                     {"llama_cpp", KVLENS_LLAMA_ORIGIN},
                     {"memory", memory}};
    write_run_info(run_path, run_info);

    if (!todo.empty()) {
        // Render and tokenize every prompt first: the context must hold `parallel` of the longest.
        std::vector<std::vector<llama_token>> prompts(todo.size());
        size_t longest = 0;
        for (size_t i = 0; i < todo.size(); ++i) {
            std::vector<ChatMessage> msgs;
            if (!cfg.system.empty()) msgs.push_back({"system", cfg.system});
            msgs.push_back({"user", todo[i]->prompt});
            prompts[i] = model.tokenize(render_chat(tmpl, msgs, true, think), true, true);
            longest = std::max(longest, prompts[i].size());
        }
        SessionParams sp;
        sp.n_seq_max = p.parallel;
        sp.n_ctx = p.n_ctx > 0 ? p.n_ctx : (int)(p.parallel * (longest + max_tokens + 1));
        sp.n_threads = p.n_threads;
        sp.capture_source = parse_capture_source(p.kv_source);
        sp.n_batch = std::min(sp.n_ctx, 2048);
        Session session(model, sp);

        Progress progress("eval coe " + cfg.name, (int64_t)samples.size(),
                          (int64_t)(samples.size() - todo.size()));
        int n_correct = 0, n_new = 0;
        for (size_t begin = 0; begin < todo.size(); begin += p.parallel) {
            const size_t end = std::min(todo.size(), begin + (size_t)p.parallel);
            std::vector<std::vector<llama_token>> batch(prompts.begin() + begin, prompts.begin() + end);
            std::vector<std::unique_ptr<CoeScorer>> scorers;
            for (size_t i = 0; i < batch.size(); ++i)
                scorers.push_back(
                    std::make_unique<CoeScorer>(session, (llama_seq_id)i, (int)batch[i].size()));
            GenerateParams gp;
            gp.max_tokens = max_tokens;
            const std::vector<Generation> gens = generate(session, batch, gp);
            for (size_t i = 0; i < gens.size(); ++i) {
                const Sample& s = *todo[begin + i];
                const Generation& g = gens[i];
                const CoeResult r = scorers[i]->result(g.steps);
                const MatchResult m = match_answer(cfg.matcher, g.text, s.reference);
                const bool truncated = g.stop != StopReason::EndOfTurn;
                const bool correct = m.correct && !truncated;  // cut answers count as wrong (method.md)
                json rec = {
                    {"index", s.index},
                    {"id", s.id},
                    {"question", s.question},
                    {"reference", s.reference},
                    {"output", g.text},
                    {"extracted", m.extracted},
                    {"matched", m.correct},
                    {"truncated", truncated},
                    {"correct", correct},
                    {"stop", to_string(g.stop)},
                    {"n_output_tokens", g.output.size()},
                    {"n_producer", r.n_producer},
                    {"scores", r.named()},
                    {"kv_steps", {{"m", r.kv.m}, {"a", r.kv.a}, {"status", coe_status_string(r.kv.status)}}},
                    {"hs_steps", {{"m", r.hs.m}, {"a", r.hs.a}, {"status", coe_status_string(r.hs.status)}}},
                    {"coe_state_bytes", scorers[i]->state_bytes()},
                    {"prompt_tokens", g.prompt},
                    {"output_tokens", g.output}};
                results.append(rec);
                n_correct += correct;
                ++n_new;
                progress.add(1, "acc " + fmt(100.0 * n_correct / n_new, 1) + "%");
            }
            scorers.clear();
            session.clear();
        }
        progress.finish();
    }

    // The report covers exactly the samples asked for (a larger earlier run may hold more).
    std::vector<json> records;
    std::set<int> wanted;
    for (const Sample& s : samples) wanted.insert(s.index);
    for (const json& r : results.records())
        if (wanted.count(r["index"].get<int>())) records.push_back(r);
    std::sort(records.begin(), records.end(),
              [](const json& a, const json& b) { return a["index"].get<int>() < b["index"].get<int>(); });
    write_coe_report(p.out_dir, records, run_info, p.bootstrap, p.seed);
}

// Mean of per-step arrays over the records of one class; steps are layer transitions (same count for all).
static std::vector<double> mean_steps(const std::vector<json>& records, const char* chain, const char* what,
                                      bool correct) {
    std::vector<double> sum;
    int n = 0;
    for (const json& r : records) {
        if (r["correct"].get<bool>() != correct) continue;
        const std::vector<double> v = r[chain][what].get<std::vector<double>>();
        if (sum.empty()) sum.assign(v.size(), 0.0);
        if (v.size() != sum.size()) continue;
        for (size_t i = 0; i < v.size(); ++i) sum[i] += v[i];
        ++n;
    }
    for (double& x : sum) x /= std::max(n, 1);
    return sum;
}

void write_coe_report(const std::string& out_dir, const std::vector<json>& records, const json& run_info,
                      int bootstrap, uint64_t seed) {
    const fs::path dir(out_dir);
    std::vector<int> labels;
    int n_truncated = 0;
    for (const json& r : records) {
        labels.push_back(r["correct"].get<bool>() ? 1 : 0);
        n_truncated += r["truncated"].get<bool>();
    }
    const int n = (int)labels.size();
    const int n_correct = (int)std::count(labels.begin(), labels.end(), 1);
    const bool both_classes = n_correct > 0 && n_correct < n;

    std::vector<std::vector<std::string>> rows;
    std::vector<Series> roc_series;
    json summary = {
        {"n", n}, {"n_correct", n_correct}, {"n_truncated", n_truncated}, {"scores", json::object()}};
    int color = 0;
    for (const std::string& name : coe_report_scores()) {
        std::vector<double> scores;
        for (const json& r : records) scores.push_back(r["scores"][name].get<double>());
        if (!both_classes) {
            rows.push_back({score_label(name), "n/a", "n/a", "n/a", "n/a"});
            continue;
        }
        const BinaryMetrics m = binary_metrics(scores, labels);
        const AurocInterval ci = bootstrap_auroc(scores, labels, bootstrap, seed);
        rows.push_back({score_label(name), fmt(m.auroc, 3), "[" + fmt(ci.lo, 3) + ", " + fmt(ci.hi, 3) + "]",
                        fmt(m.aupr, 3), fmt(m.fpr95, 3)});
        summary["scores"][name] = {
            {"auroc", m.auroc}, {"auroc_ci", {ci.lo, ci.hi}}, {"aupr", m.aupr}, {"fpr95", m.fpr95}};
        const RocCurve roc = roc_curve(scores, labels);
        Series s;
        s.label = score_label(name) + " (" + fmt(m.auroc, 3) + ")";
        s.x = roc.fpr;
        s.y = roc.tpr;
        s.dashed = color >= 8;  // the palette has 8 colours; the output baselines come last, dashed
        roc_series.push_back(s);
        ++color;
    }

    std::ostringstream md;
    const json& id = run_info["identity"];
    md << "# KV-CoE evaluation: " << id["dataset"].get<std::string>() << "\n\n";
    md << "Command:\n\n```\n" << run_info.value("command", std::string()) << "\n```\n\n";
    md << "- model: `" << fs::path(id["model"].get<std::string>()).filename().string() << "` ("
       << run_info["model_info"]["arch"].get<std::string>() << ", " << run_info["model_info"]["n_layer"]
       << " layers)\n";
    md << "- kvlens " << run_info["kvlens_version"].get<std::string>() << ", llama.cpp "
       << run_info["llama_cpp"].get<std::string>() << "\n";
    md << "- chat template: " << run_info["chat_template_used"].get<std::string>()
       << ", think: " << id["think"].get<std::string>() << ", greedy, max " << id["max_tokens"]
       << " tokens\n";
    md << "- matcher: " << id["matcher"].get<std::string>() << "; samples: " << n
       << ", correct: " << n_correct << " (accuracy " << fmt(n ? 100.0 * n_correct / n : 0, 1)
       << "%), cut by the token limit (counted wrong): " << n_truncated << "\n\n";
    md << "Correct answers are the positive class. AUROC with a bootstrap 95% interval (" << bootstrap
       << " resamples, seed " << seed
       << "); FPR95 = false-positive rate at 95% true-positive rate (lower is better).\n\n";
    md << markdown_table({"score", "AUROC", "95% CI", "AUPR", "FPR95"}, rows) << "\n";
    if (!both_classes) md << "All samples fall in one class: the separation metrics are undefined.\n\n";

    md << "## Memory of the score state per sequence\n\n";
    std::vector<std::vector<std::string>> mem_rows;
    for (const char* t : {"100", "2000"}) {
        const json& m = run_info["memory"][t];
        mem_rows.push_back({t, std::to_string(m["kv_coe_state_bytes"].get<size_t>()),
                            std::to_string(m["hs_coe_state_bytes"].get<size_t>()),
                            std::to_string(m["hidden_trajectory_bytes"].get<size_t>())});
    }
    md << markdown_table({"generated tokens", "KV-CoE state (bytes)", "HS-CoE streaming state (bytes)",
                          "hidden trajectory stored per token (bytes)"},
                         mem_rows)
       << "\nMeasured by feeding the accumulators 100 and 2000 rows; the KV rows themselves are the "
          "cache's.\n\n";
    md << "## Plots\n\n![ROC](roc.svg)\n\n![KV chain per layer step](layers-kv.svg)\n\n"
          "![Hidden chain per layer step](layers-hs.svg)\n";
    write_text_file((dir / "report.md").string(), md.str());
    write_text_file((dir / "summary.json").string(), summary.dump(2) + "\n");

    PlotSpec roc;
    roc.title = "ROC: " + id["dataset"].get<std::string>() + " (correct = positive)";
    roc.x_label = "false-positive rate";
    roc.y_label = "true-positive rate";
    roc.x_min = roc.y_min = 0;
    roc.x_max = roc.y_max = 1;
    roc.diagonal = true;
    roc.width = 720;
    roc.height = 560;
    write_text_file((dir / "roc.svg").string(), svg_line_plot(roc, roc_series));

    for (const auto& [chain, title, file] :
         {std::tuple<const char*, const char*, const char*>{"kv_steps", "KV chain (K;V)", "layers-kv.svg"},
          {"hs_steps", "hidden-state chain", "layers-hs.svg"}}) {
        std::vector<Series> ss;
        for (const auto& [what, name] :
             {std::pair<const char*, const char*>{"m", "magnitude M_i"}, {"a", "angle A_i"}}) {
            for (bool ok : {true, false}) {
                Series s;
                s.label = std::string(name) + (ok ? ", correct" : ", incorrect");
                s.y = mean_steps(records, chain, what, ok);
                for (size_t i = 0; i < s.y.size(); ++i) s.x.push_back((double)i);
                s.dashed = !ok;
                s.color = std::string(what) == "m" ? "#0072B2" : "#D55E00";
                s.markers = true;
                ss.push_back(s);
            }
        }
        PlotSpec ps;
        ps.title = std::string("Mean per layer step, ") + title;
        ps.x_label = "layer step i (h_i -> h_i+1)";
        ps.y_label = "normalised step";
        write_text_file((dir / file).string(), svg_line_plot(ps, ss));
    }
}

}  // namespace kvlens
