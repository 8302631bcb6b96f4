// kvlens sample: N samples of one prompt decoded together, one answer chosen (or abstained on);
// kvlens calibrate: fit a score -> P(correct) map on a labelled run; kvlens eval sample: the dataset
// evaluation.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/common.h"
#include "engine/chat_template.h"
#include "eval/matchers.h"
#include "eval/sample_eval.h"
#include "eval/split.h"
#include "methods/calibration.h"
#include "methods/sampling.h"
#include "methods/selection.h"
#include "util/data_dir.h"

namespace kvlens::cli {

namespace {

struct SampleOptions {
    ModelOptions model;
    std::string prompt, system, think = "default", chat_template = "auto";
    int n = 4, max_tokens = 256;
    SamplingParams sampling;
    std::string matcher = "last_number", reference, strategy = "majority", score = "hs_coe_c", calibration,
                out;
    double abstain_below = -1;
    TokenCoeOptions coe;
};

void run_sample(const SampleOptions& o) {
    if (o.prompt.empty()) throw Error("--prompt: empty");
    const ChatTemplate tmpl_flag =
        with_flag("--template", [&] { return parse_chat_template(o.chat_template); });
    const ThinkMode think = with_flag("--think", [&] { return parse_think_mode(o.think); });
    const MatcherKind matcher = with_flag("--matcher", [&] { return parse_matcher(o.matcher); });
    const Strategy strategy = with_flag("--strategy", [&] { return parse_strategy(o.strategy); });
    with_flag("--temp", [&] {
        check_sampling_params(o.sampling);
        return 0;
    });

    // The calibration decides the score; "auto" looks next to the model.
    std::vector<Calibration> cals;
    std::string score = o.score;
    if (!o.calibration.empty()) {
        const std::string path =
            o.calibration == "auto" ? default_calibration_path(o.model.model, o.score) : o.calibration;
        cals.push_back(with_flag("--calibration", [&] { return load_calibration(path); }));
        score = cals[0].score;
    }
    if (strategy == Strategy::WeightedVote && cals.empty())
        throw Error(
            "--strategy weighted: needs --calibration (votes are weighted by calibrated probabilities)");
    if (o.abstain_below >= 0 && strategy == Strategy::BestOfN && cals.empty())
        throw Error("--abstain-below with --strategy best: needs --calibration (a raw score has no scale)");

    std::unique_ptr<Model> model = load_model(o.model);
    const ModelInfo& mi = model->info();
    for (const Calibration& c : cals)
        check_calibration_model(c, calibration_model_of(model->path(), mi.name, mi.arch, mi.n_layer));
    const ChatTemplate tmpl =
        tmpl_flag == ChatTemplate::Auto ? detect_chat_template(mi.chat_template, mi.arch) : tmpl_flag;
    std::vector<ChatMessage> msgs;
    if (!o.system.empty()) msgs.push_back({"system", o.system});
    msgs.push_back({"user", o.prompt});
    const std::vector<llama_token> prompt = model->tokenize(render_chat(tmpl, msgs, true, think), true, true);

    Session session(*model, session_params(o.model, o.n));
    SampleParams sp;
    sp.token_coe = token_coe_spec(o.coe);
    sp.n = o.n;
    sp.max_tokens = o.max_tokens;
    sp.sampling = o.sampling;
    const SampleSet set = sample_n(session, prompt, sp);

    std::vector<Candidate> cands;
    std::vector<nlohmann::json> lines;
    for (int i = 0; i < o.n; ++i) {
        const SampleOut& s = set.samples[i];
        const MatchResult m = match_answer(matcher, s.gen.text, o.reference);
        auto it = s.scores.find(score);
        if (cals.empty() && it == s.scores.end()) throw Error("--score '" + score + "': no such score");
        const double p = cals.empty() ? it->second : cals[0].apply(s.scores);  // a logistic one reads several
        cands.push_back({m.extracted, p});
        nlohmann::json j = {{"sample", i},
                            {"seed", o.sampling.seed + (uint32_t)i},
                            {"output", s.gen.text},
                            {"extracted", m.extracted},
                            {"stop", to_string(s.gen.stop)},
                            {"n_output_tokens", s.gen.output.size()},
                            {"scores", s.scores}};
        for (const auto& [k, v] : calibrated_scores(s.scores, cals)) j[k] = v;
        if (!o.reference.empty()) j["correct"] = m.correct && s.gen.stop == StopReason::EndOfTurn;
        lines.push_back(j);
    }
    const Choice ch = select_answer(strategy, cands);
    const bool answer = o.abstain_below < 0 || answers(ch.confidence, o.abstain_below);

    if (!o.out.empty()) {
        std::ofstream f(o.out, std::ios::app);
        for (size_t i = 0; i < lines.size(); ++i) {
            lines[i]["chosen"] = (int)i == ch.index && answer;
            lines[i]["strategy"] = to_string(strategy);
            f << lines[i].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
        }
        if (!f) throw Error("--out '" + o.out + "': write failed");
    }
    const std::string conf = std::to_string(ch.confidence);
    if (!answer) {
        printf("abstained: confidence %s < %g (strategy %s%s)\n", conf.c_str(), o.abstain_below,
               to_string(strategy), strategy == Strategy::Majority ? "" : (", score " + score).c_str());
        return;
    }
    printf("answer: %s\n", ch.answer.empty() ? "(none extracted)" : ch.answer.c_str());
    printf("chosen: sample %d of %d, strategy %s%s, confidence %s, votes %d/%d\n", ch.index, o.n,
           to_string(strategy),
           strategy == Strategy::Majority || strategy == Strategy::First ? "" : (", score " + score).c_str(),
           conf.c_str(), ch.votes, o.n);
    printf("%s\n", set.samples[ch.index].gen.text.c_str());
}

struct CalibrateOptions {
    std::string from, score, method = "isotonic", out, model, features, name, part;
    double ridge = 1.0;
};

std::vector<std::string> parse_name_list(const std::string& s);

void run_calibrate(const CalibrateOptions& o) {
    if (o.out.empty() && o.model.empty())
        throw Error("calibrate: give -o FILE or -m MODEL (saved next to it)");
    const CalibrationMethod m = with_flag("--method", [&] { return parse_calibration_method(o.method); });
    const bool logistic = m == CalibrationMethod::Logistic;
    std::vector<std::string> features;
    if (logistic) {
        if (!o.score.empty()) throw Error("--score: logistic combines --features (name it with --name)");
        features = parse_name_list(o.features);
        if (features.empty())
            throw Error("--features: logistic needs the scores to combine, e.g. kv_coe_r,max_prob");
    } else {
        if (o.score.empty()) throw Error(std::string("--score: ") + to_string(m) + " calibrates one score");
        if (!o.features.empty() || !o.name.empty())
            throw Error("--features, --name: only with --method logistic");
        features = {o.score};
    }
    // Logistic is meant to be reported on held-out questions: it trains on the development part by default.
    const std::string part = o.part.empty() ? (logistic ? "dev" : "all") : o.part;
    if (part != "dev" && part != "test" && part != "all")
        throw Error("--part '" + part + "': expected dev, test or all");
    std::function<bool(const std::string&)> keep;
    if (part != "all") keep = [&](const std::string& id) { return part_name(split_part(id)) == part; };
    const LabelledRows data = read_labelled_rows(o.from, features, keep);

    Calibration c;
    if (logistic) {
        c = fit_logistic(features, data.rows, data.labels, o.ridge,
                         o.name.empty() ? "combined" : "combined:" + o.name);
    } else {
        std::vector<double> s;
        for (const auto& r : data.rows) s.push_back(r[0]);
        c = fit_calibration(m, s, data.labels);
        c.score = o.score;
    }
    c.source = o.from;
    if (logistic || part != "all") c.part = part;
    // The model it is for: the training run's (run.json beside the labels), else the one it is saved next to.
    c.model = read_run_model(std::filesystem::path(o.from).parent_path().string());
    if (!o.model.empty()) {
        const CalibrationModel target = calibration_model_of(o.model, "", "", 0);
        with_flag("-m", [&] {
            check_calibration_model(c, target);
            return 0;
        });
        if (c.model.empty()) c.model = target;
    }
    const std::string path = o.out.empty() ? default_calibration_path(o.model, c.score) : o.out;
    save_calibration(c, path);

    const std::string on =
        std::to_string(c.n) + " samples (" + std::to_string(c.n_correct) + " correct" +
        (part == "all" ? "" : "; the " + part + " part of " + std::to_string(data.n_lines) + " lines") +
        (data.n_skipped ? "; " + std::to_string(data.n_skipped) + " skipped for a null score" : "") + ")";
    if (!logistic) {
        printf("%s calibration of %s on %s: P(correct) %s with the score, AUROC %.3f -> %s\n", to_string(m),
               o.score.c_str(), on.c_str(), c.direction > 0 ? "increases" : "decreases", c.train_auroc,
               path.c_str());
    } else {
        printf("logistic calibration '%s' of %zu scores on %s: training AUROC %.3f -> %s\n", c.score.c_str(),
               features.size(), on.c_str(), c.train_auroc, path.c_str());
        printf("  %-20s %10s %12s %12s   (weight per standard deviation; ridge %g)\n", "feature", "weight",
               "mean", "std", c.ridge);
        for (size_t j = 0; j < features.size(); ++j)
            printf("  %-20s %+10.4f %12.6g %12.6g%s\n", features[j].c_str(), c.w[j], c.mean[j], c.sd[j],
                   c.sd[j] > 0 ? "" : "   dropped: constant on the training set");
        printf("  %-20s %+10.4f\n", "bias", c.bias);
    }
    if (!c.model.empty()) printf("  for model %s\n", c.model.describe().c_str());
}

std::vector<int> parse_int_list(const std::string& s) {
    std::vector<int> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        try {
            out.push_back(std::stoi(item));
        } catch (const std::exception&) {
            throw Error("'" + item + "' is not an integer");
        }
    }
    return out;
}

std::vector<std::string> parse_name_list(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

}  // namespace

CLI::App* add_sample_command(CLI::App& app) {
    auto o = std::make_shared<SampleOptions>();
    o->sampling.temperature = 0.7f;
    o->sampling.top_k = 0;
    o->sampling.top_p = 0.95f;
    CLI::App* sub = app.add_subcommand("sample",
                                       "N samples of one prompt decoded together (shared prompt cache), "
                                       "scored; choose one answer or abstain");
    add_model_options(sub, o->model);
    add_token_coe_options(sub, o->coe);
    sub->add_option("-p,--prompt", o->prompt, "the user message")->required();
    sub->add_option("-s,--system", o->system, "system message");
    sub->add_option("-n,--samples", o->n, "samples N")->check(CLI::Range(1, 64))->capture_default_str();
    sub->add_option("--max-tokens", o->max_tokens, "tokens per sample at most")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    sub->add_option("--template", o->chat_template,
                    "chat template: auto, chatml, qwen2, qwen3, deepseek-r1, llama3")
        ->capture_default_str();
    sub->add_option("--think", o->think, "thinking mode: on, off, default")->capture_default_str();
    sub->add_option("--temp", o->sampling.temperature, "sampling temperature")->capture_default_str();
    sub->add_option("--top-k", o->sampling.top_k, "top-k filter (0: off)")->capture_default_str();
    sub->add_option("--top-p", o->sampling.top_p, "top-p filter (1: off)")->capture_default_str();
    sub->add_option("--seed", o->sampling.seed, "sampling seed (sample i uses seed + i)")
        ->capture_default_str();
    sub->add_option("--matcher", o->matcher,
                    "answer extraction: last_number, number_after_answer, boxed, choice_letter")
        ->capture_default_str();
    sub->add_option("--reference", o->reference, "reference answer: adds \"correct\" to each JSONL line");
    sub->add_option("--strategy", o->strategy,
                    "first, best (best-of-N by score), majority, weighted (score-weighted vote)")
        ->capture_default_str();
    sub->add_option(
           "--score", o->score,
           "selection score (kv_coe_r, kv_coe_c, hs_coe_c, max_prob, ...); a calibration file names its own")
        ->capture_default_str();
    sub->add_option("--calibration", o->calibration,
                    "calibration file, or 'auto': <model>.calibration.<score>.json");
    sub->add_option(
        "--abstain-below", o->abstain_below,
        "abstain when the choice's confidence (calibrated p; vote or weight share) is below this");
    sub->add_option("-o,--out", o->out,
                    "append one JSON line per sample (text, answer, scores) to this file");
    sub->callback([o] { run_sample(*o); });

    auto c = std::make_shared<CalibrateOptions>();
    CLI::App* cal = app.add_subcommand(
        "calibrate", "fit a score -> P(correct) map (isotonic, Platt), or combine several scores (logistic)");
    cal->add_option("--from", c->from,
                    "labelled JSONL: samples.jsonl of eval coe / eval sample, or sample -o with --reference")
        ->required();
    cal->add_option("--score", c->score, "isotonic, platt: the score, e.g. hs_coe_c, kv_coe_r, max_prob");
    cal->add_option("--method", c->method, "isotonic, platt or logistic")->capture_default_str();
    cal->add_option(
        "--features", c->features,
        "logistic: the scores to combine, comma-separated, e.g. kv_coe_r,kv_coe_c,max_prob,neg_length");
    cal->add_option("--name", c->name, "logistic: the score is combined:<name> (default: combined)");
    cal->add_option("--ridge", c->ridge, "logistic: L2 penalty on the standardised weights (C = 1/ridge)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cal->add_option(
        "--part", c->part,
        "questions to train on, split by id: dev, test or all (default: dev for logistic, else all)");
    cal->add_option("-o,--out", c->out, "calibration file to write");
    cal->add_option("-m,--model", c->model,
                    "or: save next to this model as <model>.calibration.<score>.json");
    cal->callback([c] { run_calibrate(*c); });

    // kvlens eval sample
    CLI::App* eval = app.get_subcommand("eval");
    auto p = std::make_shared<SampleEvalParams>();
    auto ns = std::make_shared<std::string>("1,4,8");
    auto scores = std::make_shared<std::string>("kv_coe_r,kv_coe_c,hs_coe_c,max_prob,inv_ppl");
    p->data_dir = find_data_dir();  // --data-dir overrides
    CLI::App* ev = eval->add_subcommand(
        "sample",
        "N samples per question: accuracy of every selection strategy and accuracy-coverage curves");
    ev->add_option("-m,--model", p->model_path, "GGUF model file")->required();
    ev->add_option("--dataset", p->dataset, "built-in dataset name or a dataset config .json")->required();
    ev->add_option("--data-dir", p->data_dir,
                   "directory of the built-in dataset configs (env KVLENS_DATA_DIR)")
        ->capture_default_str();
    ev->add_option("-o,--out", p->out_dir, "output directory; reruns resume")->required();
    ev->add_option("--limit", p->limit,
                   "first N questions of the selected part (0: all); chosen before --shard, so the shards of "
                   "a run partition exactly the questions of the one-machine run")
        ->check(CLI::Range(0, 1 << 30))
        ->capture_default_str();
    ev->add_option("--part", p->part,
                   "all, dev or test: only the questions of that part of eval coe's split by question id "
                   "(to judge a configuration chosen on a coe run's development part on unseen questions)")
        ->check(CLI::IsMember({"all", "dev", "test"}))
        ->capture_default_str();
    ev->add_option("--shard", p->shard,
                   "I/N: only the questions whose id hashes to shard I of N (0 <= I < N); run every I, on "
                   "any machines, then join the directories with eval merge");
    ev->add_option("--dev-fraction", p->dev_fraction, "the split's development share, as in eval coe")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    ev->add_option("--max-tokens", p->max_tokens, "tokens per sample at most (0: the dataset config's)")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
    ev->add_option("--n", *ns, "sample counts N, comma-separated; max(N) samples are drawn per question")
        ->capture_default_str();
    ev->add_option("--temp", p->temperature, "sampling temperature")->capture_default_str();
    ev->add_option("--top-k", p->top_k, "top-k filter (0: off)")->capture_default_str();
    ev->add_option("--top-p", p->top_p, "top-p filter (1: off)")->capture_default_str();
    ev->add_option("--seed", p->seed, "sampling seed")->capture_default_str();
    ev->add_option("--scores", *scores, "selection scores, comma-separated")->capture_default_str();
    ev->add_option("--calibration", p->calibration, "isotonic or platt")->capture_default_str();
    ev->add_option("--ctx", p->n_ctx, "context size (0: enough for max(N) samples)")
        ->check(CLI::Range(0, 1 << 22))
        ->capture_default_str();
    ev->add_option("-t,--threads", p->n_threads, "CPU threads (0: all)")
        ->check(CLI::Range(0, 1024))
        ->capture_default_str();
    add_kv_source_option(ev, p->kv_source);
    auto coe_opts = std::make_shared<TokenCoeOptions>();
    add_token_coe_options(ev, *coe_opts);
    ev->add_option("--template", p->chat_template, "chat template")->capture_default_str();
    ev->add_option("--think", p->think, "thinking mode: on, off, default")->capture_default_str();
    ev->callback([ev, p, ns, scores, coe_opts] {
        SampleEvalParams q = *p;
        q.token_coe = token_coe_spec(*coe_opts);
        q.ns = with_flag("--n", [&] { return parse_int_list(*ns); });
        q.scores = parse_name_list(*scores);
        // main() keeps argv to itself; the given options, as parsed, stand in for the command line.
        q.command_line = "kvlens eval sample";
        for (const CLI::Option* opt : ev->get_options()) {
            if (opt->count() == 0 || opt->get_name() == "--help") continue;
            for (const std::string& v : opt->results()) {
                const bool quote = v.find_first_of(" \t\"'$") != std::string::npos || v.empty();
                q.command_line += " " + opt->get_name() + " " + (quote ? "'" + v + "'" : v);
            }
        }
        run_sample_eval(q);
    });
    return sub;
}

}  // namespace kvlens::cli
