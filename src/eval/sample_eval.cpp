#include "eval/sample_eval.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/chat_template.h"
#include "eval/dataset.h"
#include "eval/metrics.h"
#include "eval/relabel.h"
#include "eval/results_file.h"
#include "eval/shard.h"
#include "eval/split.h"
#include "eval/svg_plot.h"
#include "methods/calibration.h"
#include "methods/sampling.h"
#include "methods/selection.h"
#include "util/error.h"
#include "util/progress.h"

namespace kvlens {

namespace fs = std::filesystem;
using nlohmann::json;

static json run_identity(const SampleEvalParams& p, const DatasetConfig& cfg, int max_tokens, int n_max) {
    return {
        {"model", fs::absolute(p.model_path).string()},
        {"dataset", cfg.name},
        {"dataset_file", cfg.file},
        {"prompt_template", cfg.prompt_template},
        {"system", cfg.system},
        {"matcher", to_string(cfg.matcher)},
        {"max_tokens", max_tokens},
        {"template", p.chat_template},
        {"think", p.think},
        {"n_max", n_max},
        {"temperature", p.temperature},
        {"top_k", p.top_k},
        {"top_p", p.top_p},
        {"seed", p.seed},
        {"coe_version", 2},  // token-axis kv_coe_*: records of version 1 hold the layer axis under that name
        {"token_coe", to_string(p.token_coe)}};
}

void run_sample_eval(const SampleEvalParams& p) {
    if (p.ns.empty()) throw Error("--n: no sample counts");
    for (int n : p.ns)
        if (n < 1 || n > 64) throw Error("--n: " + std::to_string(n) + " out of range 1..64");
    if (p.scores.empty()) throw Error("--scores: none given");
    if (parse_calibration_method(p.calibration) == CalibrationMethod::Logistic)
        throw Error(
            "--calibration logistic: eval sample calibrates each score alone; combine scores with "
            "kvlens calibrate --method logistic");
    const int n_max = *std::max_element(p.ns.begin(), p.ns.end());
    const DatasetConfig cfg = load_dataset_config(p.dataset, p.data_dir);
    if (p.part != "all" && p.part != "dev" && p.part != "test")
        throw Error("--part: '" + p.part + "' is not all, dev or test");
    if (!(p.dev_fraction >= 0.0 && p.dev_fraction <= 1.0))
        throw Error("--dev-fraction: " + std::to_string(p.dev_fraction) + " is outside [0, 1]");
    std::vector<Sample> samples;
    if (p.part == "all") {
        samples = load_samples(cfg, p.limit);
    } else {
        // Questions of one part of eval coe's split, so that a configuration chosen on a coe run's
        // development part is judged here on questions it never saw.
        const Part want = p.part == "dev" ? Part::Dev : Part::Test;
        for (Sample& s : load_samples(cfg, 0)) {
            if (p.limit > 0 && (int)samples.size() >= p.limit) break;
            if (split_part(s.id, p.dev_fraction) == want) samples.push_back(std::move(s));
        }
    }
    if (samples.empty()) throw Error("dataset '" + cfg.name + "': no samples");
    // The limit (and part) choose the run's questions, the shard a part of them (eval/shard.h).
    const ShardSpec shard = parse_shard(p.shard);
    const std::vector<Sample> all_samples = std::move(samples);
    samples = select_shard(all_samples, shard);
    const int max_tokens = p.max_tokens > 0 ? p.max_tokens : cfg.max_tokens;
    const ChatTemplate tmpl_flag = parse_chat_template(p.chat_template);
    const ThinkMode think = parse_think_mode(p.think);
    SamplingParams sampling;
    sampling.temperature = p.temperature;
    sampling.top_k = p.top_k;
    sampling.top_p = p.top_p;
    check_sampling_params(sampling);

    json identity = run_identity(p, cfg, max_tokens, n_max);
    if (p.part != "all") {  // absent for all questions, so runs made before --part still resume
        identity["part"] = p.part;
        identity["dev_fraction"] = p.dev_fraction;
    }
    if (parse_capture_source(p.kv_source) != CaptureSource::Graph) identity["kv_source"] = p.kv_source;
    if (shard.active()) identity["shard"] = to_string(shard);
    const std::string run_path = open_run_dir(p.out_dir, identity);
    ResultsFile results((fs::path(p.out_dir) / "samples.jsonl").string(), "index");
    relabel_results(results, cfg.matcher, p.rescore, "eval sample", p.out_dir);
    std::vector<const Sample*> todo;
    for (const Sample& s : samples)
        if (!results.done(s.index)) todo.push_back(&s);

    set_verbose(false);
    Model model(ModelParams{p.model_path});
    const ModelInfo& mi = model.info();
    const ChatTemplate tmpl =
        tmpl_flag == ChatTemplate::Auto ? detect_chat_template(mi.chat_template, mi.arch) : tmpl_flag;
    json run_info = {{"identity", identity},
                     {"model_info", {{"arch", mi.arch}, {"name", mi.name}, {"n_layer", mi.n_layer}}},
                     {"chat_template_used", to_string(tmpl)},
                     {"n_samples", samples.size()},
                     {"command", p.command_line},
                     {"kvlens_version", KVLENS_VERSION},
                     {"llama_cpp", KVLENS_LLAMA_ORIGIN},
                     {"eval", "sample"},
                     // What the report needs beyond the identity, so that eval merge can write it.
                     {"report", {{"ns", p.ns}, {"scores", p.scores}, {"calibration", p.calibration}}}};
    if (shard.active()) run_info["shard"] = shard_run_info(shard, all_samples);
    write_run_info(run_path, run_info);

    if (!todo.empty()) {
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
        sp.n_seq_max = n_max;
        sp.n_ctx = p.n_ctx > 0 ? p.n_ctx : (int)(longest + n_max * (max_tokens + 1) + 1);
        sp.n_threads = p.n_threads;
        sp.capture_source = parse_capture_source(p.kv_source);
        sp.n_batch = std::min(sp.n_ctx, 2048);
        Session session(model, sp);
        Progress progress("eval sample " + cfg.name, (int64_t)samples.size(),
                          (int64_t)(samples.size() - todo.size()));
        int n_first_ok = 0, n_new = 0;
        for (size_t q = 0; q < todo.size(); ++q) {
            const Sample& s = *todo[q];
            SampleParams sp_q;
            sp_q.n = n_max;
            sp_q.token_coe = p.token_coe;
            sp_q.max_tokens = max_tokens;
            sp_q.sampling = sampling;
            sp_q.sampling.seed = p.seed + (uint32_t)s.index * (uint32_t)n_max;
            const auto t0 = std::chrono::steady_clock::now();
            const SampleSet set = sample_n(session, prompts[q], sp_q);
            const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            session.clear();
            json outs = json::array();
            for (const SampleOut& o : set.samples) {
                const MatchResult m = match_answer(cfg.matcher, o.gen.text, s.reference);
                const bool truncated = o.gen.stop != StopReason::EndOfTurn;
                outs.push_back({{"output", o.gen.text},
                                {"extracted", m.extracted},
                                {"matched", m.correct},
                                {"truncated", truncated},
                                {"correct", m.correct && !truncated},
                                {"stop", to_string(o.gen.stop)},
                                {"n_output_tokens", o.gen.output.size()},
                                {"scores", o.scores}});
            }
            results.append({{"index", s.index},
                            {"id", s.id},
                            {"question", s.question},
                            {"reference", s.reference},
                            {"n_prompt_tokens", prompts[q].size()},
                            {"n_decode_calls", set.n_decode_calls},
                            {"n_tokens_decoded", set.n_tokens_decoded},
                            {"seconds", secs},
                            {"samples", outs}});
            n_first_ok += outs[0]["correct"].get<bool>();
            ++n_new;
            progress.add(1, "first-sample acc " + fmt(100.0 * n_first_ok / n_new, 1) + "%");
        }
        progress.finish();
    }

    std::vector<json> records;
    std::set<int> wanted;
    for (const Sample& s : samples) wanted.insert(s.index);
    for (const json& r : results.records())
        if (wanted.count(r["index"].get<int>())) records.push_back(r);
    std::sort(records.begin(), records.end(),
              [](const json& a, const json& b) { return a["index"].get<int>() < b["index"].get<int>(); });
    if (!records.empty()) write_sample_report(p.out_dir, records, run_info, p);  // a shard may be empty
}

// ---- report -----------------------------------------------------------------------------------------------

namespace {

struct Outcome {
    std::vector<int> correct;        // per question
    std::vector<double> confidence;  // per question, for selective answering
};

// One strategy's result over all questions for one N.
struct Row {
    std::string label;
    std::map<int, double> accuracy, area;  // by N
    std::map<int, std::vector<CoveragePoint>> curve;
    std::map<int, std::vector<int>> correct;  // by N, per question: for the paired comparisons
};

}  // namespace

void write_sample_report(const std::string& out_dir, const std::vector<json>& records, const json& run_info,
                         const SampleEvalParams& p) {
    const fs::path dir(out_dir);
    const int nq = (int)records.size();
    if (nq == 0) throw Error("sample report: no questions");
    const CalibrationMethod method = parse_calibration_method(p.calibration);
    const int n_max = run_info["identity"]["n_max"].get<int>();

    // Calibrations: full data (the artefact) and cross-fitted per fold (for the table).
    std::map<std::string, Calibration> full;
    std::map<std::string, std::array<Calibration, 2>> fold_cal;
    std::set<std::string> usable;
    json cal_summary = json::object();
    for (const std::string& s : p.scores) {
        std::vector<double> xs[2];
        std::vector<int> ys[2];
        for (int q = 0; q < nq; ++q)
            for (const json& smp : records[q]["samples"]) {
                if (!smp["scores"].contains(s))
                    throw Error("sample report: no score '" + s + "' in the samples");
                xs[q % 2].push_back(smp["scores"][s].get<double>());
                ys[q % 2].push_back(smp["correct"].get<bool>() ? 1 : 0);
            }
        try {
            std::vector<double> all = xs[0];
            all.insert(all.end(), xs[1].begin(), xs[1].end());
            std::vector<int> ally = ys[0];
            ally.insert(ally.end(), ys[1].begin(), ys[1].end());
            full[s] = fit_calibration(method, all, ally);
            full[s].score = s;
            full[s].source = (dir / "samples.jsonl").string();
            full[s].model = read_run_model(dir.string());  // generate/sample/serve refuse other models
            // Fold f is scored by the calibration fitted on the other fold.
            fold_cal[s] = {fit_calibration(method, xs[1], ys[1]), fit_calibration(method, xs[0], ys[0])};
            save_calibration(full[s], (dir / ("calibration." + s + ".json")).string());
            usable.insert(s);
            cal_summary[s] = {{"direction", full[s].direction},
                              {"sample_auroc", full[s].train_auroc},
                              {"fold_directions", {fold_cal[s][0].direction, fold_cal[s][1].direction}}};
        } catch (const Error& e) {
            cal_summary[s] = {{"error", e.what()}};
        }
    }

    std::vector<int> ns;
    for (int n : p.ns)
        if (n <= n_max && std::find(ns.begin(), ns.end(), n) == ns.end()) ns.push_back(n);
    std::sort(ns.begin(), ns.end());

    std::vector<Row> rows;
    auto row = [&](const std::string& label) -> Row& {
        for (Row& r : rows)
            if (r.label == label) return r;
        rows.push_back({label, {}, {}, {}, {}});
        return rows.back();
    };
    auto add = [&](const std::string& label, int n, const Outcome& o) {
        Row& r = row(label);
        int ok = 0;
        for (int c : o.correct) ok += c;
        r.accuracy[n] = (double)ok / nq;
        r.correct[n] = o.correct;
        if (!o.confidence.empty()) {
            r.curve[n] = coverage_curve(o.confidence, o.correct);
            r.area[n] = coverage_area(r.curve[n]);
        }
    };

    for (int n : ns) {
        Outcome first, major, oracle;
        std::map<std::string, Outcome> best_raw, best_cal, weighted, first_cal;
        for (int q = 0; q < nq; ++q) {
            const json& ss = records[q]["samples"];
            std::vector<int> ok;
            std::vector<Candidate> c;
            for (int i = 0; i < n; ++i) {
                ok.push_back(ss[i]["correct"].get<bool>() ? 1 : 0);
                c.push_back({ss[i]["extracted"].get<std::string>(), 0.0});
            }
            first.correct.push_back(ok[0]);
            const Choice mj = select_answer(Strategy::Majority, c);
            major.correct.push_back(ok[mj.index]);
            major.confidence.push_back(mj.confidence);
            oracle.correct.push_back(*std::max_element(ok.begin(), ok.end()));
            for (const std::string& s : p.scores) {
                if (!usable.count(s)) continue;
                const Calibration& cal = fold_cal[s][q % 2];
                std::vector<Candidate> raw = c, oriented = c, prob = c;
                for (int i = 0; i < n; ++i) {
                    const double x = ss[i]["scores"][s].get<double>();
                    raw[i].score = x;
                    oriented[i].score = cal.direction * x;  // calibrated order, ties broken by the raw score
                    prob[i].score = cal.apply(x);
                }
                const Choice br = select_answer(Strategy::BestOfN, raw);
                best_raw[s].correct.push_back(ok[br.index]);
                const Choice bc = select_answer(Strategy::BestOfN, oriented);
                best_cal[s].correct.push_back(ok[bc.index]);
                best_cal[s].confidence.push_back(prob[bc.index].score);
                const Choice wv = select_answer(Strategy::WeightedVote, prob);
                weighted[s].correct.push_back(ok[wv.index]);
                weighted[s].confidence.push_back(wv.confidence);
                first_cal[s].correct.push_back(ok[0]);
                first_cal[s].confidence.push_back(prob[0].score);
            }
        }
        add("first sample", n, first);
        add("majority vote (conf: vote share)", n, major);
        for (const std::string& s : p.scores) {
            if (!usable.count(s)) continue;
            add("best-of-N by raw " + s, n, best_raw[s]);
            add("best-of-N by calibrated " + s + " (conf: p)", n, best_cal[s]);
            add("vote weighted by calibrated " + s + " (conf: weight share)", n, weighted[s]);
            add("first sample (conf: calibrated " + s + ")", n, first_cal[s]);
        }
        add("oracle: any of N correct", n, oracle);
    }

    // Tables.
    std::vector<std::string> head = {"strategy"};
    for (int n : ns) head.push_back("N=" + std::to_string(n));
    std::vector<std::vector<std::string>> acc_rows, area_rows;
    json summary = {
        {"n_questions", nq}, {"n_max", n_max}, {"calibration", cal_summary}, {"strategies", json::array()}};
    for (const Row& r : rows) {
        if (r.label.rfind("first sample (conf", 0) == 0) continue;  // same accuracy as "first sample"
        std::vector<std::string> cells = {r.label};
        for (int n : ns) cells.push_back(fmt(100.0 * r.accuracy.at(n), 1));
        acc_rows.push_back(cells);
    }
    for (const Row& r : rows) {
        if (r.area.empty()) continue;
        std::vector<std::string> cells = {r.label};
        for (int n : ns) cells.push_back(r.area.count(n) ? fmt(r.area.at(n), 3) : "-");
        area_rows.push_back(cells);
    }
    for (const Row& r : rows) {
        json j = {{"strategy", r.label}, {"accuracy", json::object()}, {"area", json::object()}};
        for (auto& [n, a] : r.accuracy) j["accuracy"][std::to_string(n)] = a;
        for (auto& [n, a] : r.area) j["area"][std::to_string(n)] = a;
        summary["strategies"].push_back(j);
    }

    int n_trunc = 0, n_samples = 0, n_ok = 0;
    double secs = 0;
    long tokens = 0;
    for (const json& r : records) {
        secs += r.value("seconds", 0.0);
        tokens += r.value("n_tokens_decoded", 0L);
        for (const json& s : r["samples"]) {
            n_trunc += s["truncated"].get<bool>();
            n_ok += s["correct"].get<bool>();
            ++n_samples;
        }
    }
    const json& id = run_info["identity"];
    std::ostringstream md;
    md << "# Sampling with KV-CoE: " << id["dataset"].get<std::string>() << "\n\nCommand:\n\n```\n"
       << run_info.value("command", std::string()) << "\n```\n\n";
    md << "- model: `" << fs::path(id["model"].get<std::string>()).filename().string() << "` ("
       << run_info["model_info"]["arch"].get<std::string>() << ", " << run_info["model_info"]["n_layer"]
       << " layers); kvlens " << run_info["kvlens_version"].get<std::string>() << "\n";
    md << "- chat template: " << run_info["chat_template_used"].get<std::string>() << ", think "
       << id["think"].get<std::string>() << "; sampling: temperature "
       << fmt(id["temperature"].get<double>(), 2) << ", top-k " << id["top_k"] << ", top-p "
       << fmt(id["top_p"].get<double>(), 2) << ", seed " << id["seed"] << ", max " << id["max_tokens"]
       << " tokens\n";
    md << "- questions: " << nq;
    if (id.contains("part"))
        md << " (the " << id["part"].get<std::string>() << " part of the split by question id, FNV-1a, "
           << fmt(100.0 * id["dev_fraction"].get<double>(), 0) << "% development)";
    md << ", samples per question: " << n_max << " (N < " << n_max << " uses the first N of them); matcher "
       << id["matcher"].get<std::string>() << "\n";
    md << "- all samples: " << n_samples << ", correct " << fmt(100.0 * n_ok / std::max(n_samples, 1), 1)
       << "%, cut by the token limit (counted wrong) " << n_trunc << "; decoding " << fmt(secs, 1) << " s, "
       << tokens << " tokens decoded (" << fmt(tokens / std::max(secs, 1e-9), 1) << " tokens/s)\n";
    if (const int n_relabelled = count_relabelled(records); n_relabelled > 0)
        md << "- relabelled: " << n_relabelled << " of " << n_samples
           << " samples read differently by the matcher than when they were generated (`eval sample "
              "--rescore`; "
              "the first labels are under `relabelled_from` in samples.jsonl)\n";
    md << "\n";
    md << "Calibration: " << to_string(method)
       << ", cross-fitted: questions at even positions are scored by the map fitted on the odd ones and vice "
          "versa, so no question's own labels choose its answer. \"raw\" = the score as is, higher taken as "
          "better (the paper's convention).\n\n";
    md << "## Accuracy (%) per strategy\n\n" << markdown_table(head, acc_rows) << "\n";
    md << "![accuracy vs N](accuracy-vs-n.svg)\n\n";
    md << "## Selective answering: area under the accuracy-coverage curve\n\n"
          "Questions ranked by the confidence named in the row; answering the top k gives coverage k/n. The "
          "area is the mean accuracy over coverages (higher is better; a useless confidence gives about the "
          "accuracy at full coverage).\n\n"
       << markdown_table(head, area_rows) << "\n";
    for (int n : ns) md << "![coverage N=" << n << "](coverage-n" << n << ".svg)\n\n";
    // Paired comparisons: the same questions under two strategies, so the interval is of the per-question
    // difference (a bootstrap over questions), not two accuracies' intervals side by side.
    std::vector<std::pair<std::string, std::string>> pairs = {
        {"majority vote (conf: vote share)", "first sample"}};
    for (const std::string& s : p.scores) {
        if (!usable.count(s)) continue;
        pairs.push_back({"best-of-N by calibrated " + s + " (conf: p)", "first sample"});
        pairs.push_back({"vote weighted by calibrated " + s + " (conf: weight share)",
                         "majority vote (conf: vote share)"});
    }
    std::vector<std::vector<std::string>> pair_rows;
    summary["paired"] = json::array();
    for (const auto& [a, b] : pairs) {
        std::vector<std::string> cells = {a + " - " + b};
        json pj = {{"a", a}, {"b", b}, {"by_n", json::object()}};
        for (int n : ns) {
            const std::vector<int>&ca = row(a).correct.at(n), &cb = row(b).correct.at(n);
            int only_a = 0, only_b = 0;
            for (int q = 0; q < nq; ++q) {
                only_a += ca[q] && !cb[q];
                only_b += cb[q] && !ca[q];
            }
            const double d = (double)(only_a - only_b) / nq;
            const AurocInterval ci = bootstrap_mean_difference(ca, cb, 1000, p.seed);
            cells.push_back(fmt(100.0 * d, 1) + " [" + fmt(100.0 * ci.lo, 1) + ", " + fmt(100.0 * ci.hi, 1) +
                            "] " + std::to_string(only_a) + "/" + std::to_string(only_b));
            pj["by_n"][std::to_string(n)] = {
                {"difference", d}, {"ci95", {ci.lo, ci.hi}}, {"only_a", only_a}, {"only_b", only_b}};
        }
        pair_rows.push_back(cells);
        summary["paired"].push_back(pj);
    }
    md << "## Paired differences (accuracy points, A - B)\n\n"
          "Each cell: the difference on these questions, its 95% interval (bootstrap over questions, 1000 "
          "resamples, both strategies on the same resampled questions) and the questions only A / only B "
          "answered right. An interval that contains 0 says these questions do not tell the two apart.\n\n"
       << markdown_table(head, pair_rows) << "\n";
    md << "## Calibration direction per score (all samples pooled)\n\n";
    std::vector<std::vector<std::string>> cal_rows;
    for (const std::string& s : p.scores) {
        const json& c = cal_summary[s];
        if (c.contains("error")) {
            cal_rows.push_back({s, "n/a", "n/a", c["error"].get<std::string>()});
            continue;
        }
        cal_rows.push_back({s, c["direction"].get<int>() > 0 ? "increasing" : "decreasing",
                            fmt(c["sample_auroc"].get<double>(), 3),
                            std::to_string(c["fold_directions"][0].get<int>()) + ", " +
                                std::to_string(c["fold_directions"][1].get<int>())});
    }
    md << markdown_table({"score", "P(correct) vs raw score", "sample-level AUROC", "fold directions"},
                         cal_rows)
       << "\nThe calibration fitted on all questions is saved as `calibration.<score>.json` (usable with "
          "`kvlens sample --calibration`).\n";
    write_text_file((dir / "report.md").string(), md.str());
    write_text_file((dir / "summary.json").string(), summary.dump(2) + "\n");

    // Plots.
    std::vector<Series> acc_series;
    for (const Row& r : rows) {
        if (r.label.rfind("first sample (conf", 0) == 0 || r.label.rfind("vote weighted", 0) == 0) continue;
        Series s;
        s.label = r.label;
        for (int n : ns) {
            s.x.push_back(n);
            s.y.push_back(100.0 * r.accuracy.at(n));
        }
        s.markers = true;
        s.dashed = r.label.rfind("best-of-N by raw", 0) == 0 || r.label.rfind("oracle", 0) == 0;
        acc_series.push_back(s);
    }
    PlotSpec ap;
    ap.title = "Accuracy vs samples N: " + id["dataset"].get<std::string>();
    ap.x_label = "N (samples per question)";
    ap.y_label = "accuracy (%)";
    ap.width = 820;
    ap.height = 560;
    write_text_file((dir / "accuracy-vs-n.svg").string(), svg_line_plot(ap, acc_series));
    for (int n : ns) {
        std::vector<Series> ss;
        for (const Row& r : rows) {
            if (!r.curve.count(n)) continue;
            const bool first_conf = r.label.rfind("first sample (conf", 0) == 0;
            if ((n == 1) != first_conf && r.label.rfind("majority", 0) != 0) continue;
            if (r.label.rfind("vote weighted", 0) == 0) continue;
            Series s;
            s.label = r.label + " (" + fmt(r.area.at(n), 3) + ")";
            for (const CoveragePoint& pt : r.curve.at(n)) {
                s.x.push_back(pt.coverage);
                s.y.push_back(100.0 * pt.accuracy);
            }
            ss.push_back(s);
        }
        PlotSpec cp;
        cp.title = "Accuracy vs coverage, N=" + std::to_string(n);
        cp.x_label = "coverage (fraction of questions answered)";
        cp.y_label = "accuracy of the answered (%)";
        cp.x_min = 0;
        cp.x_max = 1;
        cp.y_min = 0;
        cp.y_max = 100;
        cp.width = 820;
        cp.height = 560;
        write_text_file((dir / ("coverage-n" + std::to_string(n) + ".svg")).string(), svg_line_plot(cp, ss));
    }
}

}  // namespace kvlens
