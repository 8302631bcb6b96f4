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

namespace kvlens::cli {

namespace {

struct SampleOptions {
    ModelOptions model;
    std::string prompt, system, think = "default", chat_template = "auto";
    kvlens_sample_params sample = kvlens_sample_default_params();
    std::string calibration, out;
    TokenCoeOptions coe;
};

void run_sample(const SampleOptions& o) {
    if (o.prompt.empty()) throw Error("--prompt: empty");
    kvlens_session_params sp = api_session_params(o.model, o.sample.n);
    sp.chat_template = o.chat_template;
    check(kvlens_session_params_check(sp), flag_names());  // the template; the --coe-* flags once loaded
    kvlens_sample_params p = o.sample;
    p.system = o.system;
    p.think = parse_think(o.think);
    check(kvlens_sample_params_check(p),
          {{"matcher", "--matcher"}, {"strategy", "--strategy"}, {"sampling", "--temp"}});

    // The calibration decides the score; "auto" looks next to the model.
    kvlens_calibration_info cal;
    std::string score = o.sample.score;
    if (!o.calibration.empty()) {
        sp.calibration_path = o.calibration == "auto"
                                  ? kvlens_default_calibration_path(o.model.model, o.sample.score)
                                  : o.calibration;
        check_calibration_file(kvlens_calibration_load(sp.calibration_path, &cal));
        score = cal.score;
    }
    if (p.strategy == "weighted" && o.calibration.empty())
        throw Error(
            "--strategy weighted: needs --calibration (votes are weighted by calibrated probabilities)");
    if (p.abstain_below >= 0 && p.strategy == "best" && o.calibration.empty())
        throw Error("--abstain-below with --strategy best: needs --calibration (a raw score has no scale)");

    const kvlens_model_ptr model = open_model(o.model);
    set_token_coe(sp, o.coe);
    kvlens_session* s = nullptr;
    check_calibrated(kvlens_session_open(model.get(), sp, &s));
    const kvlens_session_ptr session(s);
    kvlens_samples set;
    const kvlens_status st = kvlens_sample_n(session.get(), o.prompt, p, &set);
    if (st != KVLENS_OK && std::string(kvlens_last_error()).rfind("score '", 0) == 0)
        throw Error(std::string("--") + kvlens_last_error());  // "--score 'x': no such score"
    check(st);

    if (!o.out.empty()) {
        std::ofstream f(o.out, std::ios::app);
        for (size_t i = 0; i < set.samples.size(); ++i) {
            const kvlens_sample& x = set.samples[i];
            nlohmann::json j = {{"sample", i},       {"seed", p.seed + (uint32_t)i},
                                {"output", x.text},  {"extracted", x.extracted},
                                {"stop", x.stop},    {"n_output_tokens", x.n_output_tokens},
                                {"scores", x.scores}};
            for (const auto& [k, v] : x.p_correct) j[k] = v;
            if (!p.reference.empty()) j["correct"] = x.correct;
            j["chosen"] = (int)i == set.chosen && !set.abstained;
            j["strategy"] = p.strategy;
            f << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
        }
        if (!f) throw Error("--out '" + o.out + "': write failed");
    }
    const std::string conf = std::to_string(set.confidence);
    const std::string& strategy = p.strategy;
    if (set.abstained) {
        printf("abstained: confidence %s < %g (strategy %s%s)\n", conf.c_str(), p.abstain_below,
               strategy.c_str(), strategy == "majority" ? "" : (", score " + score).c_str());
        return;
    }
    printf("answer: %s\n", set.answer.empty() ? "(none extracted)" : set.answer.c_str());
    printf("chosen: sample %d of %d, strategy %s%s, confidence %s, votes %d/%d\n", set.chosen, p.n,
           strategy.c_str(),
           strategy == "majority" || strategy == "first" ? "" : (", score " + score).c_str(), conf.c_str(),
           set.votes, p.n);
    printf("%s\n", set.samples[set.chosen].text.c_str());
}

struct CalibrateOptions {
    std::string from, score, method = "isotonic", out, model, features, name, part;
    double ridge = 1.0;
};

std::vector<std::string> parse_name_list(const std::string& s);

void run_calibrate(const CalibrateOptions& o) {
    if (o.out.empty() && o.model.empty())
        throw Error("calibrate: give -o FILE or -m MODEL (saved next to it)");
    if (o.method != "isotonic" && o.method != "platt" && o.method != "logistic")
        throw Error("--method: calibration method '" + o.method + "': expected isotonic, platt or logistic");
    const bool logistic = o.method == "logistic";
    kvlens_calibrate_params cp = kvlens_calibrate_default_params();
    if (logistic) {
        if (!o.score.empty()) throw Error("--score: logistic combines --features (name it with --name)");
        cp.features = parse_name_list(o.features);
        if (cp.features.empty())
            throw Error("--features: logistic needs the scores to combine, e.g. kv_coe_r,max_prob");
    } else {
        if (o.score.empty()) throw Error("--score: " + o.method + " calibrates one score");
        if (!o.features.empty() || !o.name.empty())
            throw Error("--features, --name: only with --method logistic");
        cp.features = {o.score};
    }
    // Logistic is meant to be reported on held-out questions: it trains on the development part by default.
    const std::string part = o.part.empty() ? (logistic ? "dev" : "all") : o.part;
    if (part != "dev" && part != "test" && part != "all")
        throw Error("--part '" + part + "': expected dev, test or all");
    cp.from = o.from;
    cp.method = o.method;
    cp.name = o.name;
    cp.part = part;
    cp.ridge = o.ridge;
    cp.model_path = o.model;
    cp.out_path = o.out;
    kvlens_calibration_info c;
    check(kvlens_calibrate(cp, &c), {{"model_path", "-m"}});

    const std::string on =
        std::to_string(c.n) + " samples (" + std::to_string(c.n_correct) + " correct" +
        (part == "all" ? "" : "; the " + part + " part of " + std::to_string(c.n_lines) + " lines") +
        (c.n_skipped ? "; " + std::to_string(c.n_skipped) + " skipped for a null score" : "") + ")";
    if (!logistic) {
        printf("%s calibration of %s on %s: P(correct) %s with the score, AUROC %.3f -> %s\n",
               o.method.c_str(), o.score.c_str(), on.c_str(), c.direction > 0 ? "increases" : "decreases",
               c.train_auroc, c.path.c_str());
    } else {
        printf("logistic calibration '%s' of %zu scores on %s: training AUROC %.3f -> %s\n", c.score.c_str(),
               c.features.size(), on.c_str(), c.train_auroc, c.path.c_str());
        printf("  %-20s %10s %12s %12s   (weight per standard deviation; ridge %g)\n", "feature", "weight",
               "mean", "std", c.ridge);
        for (size_t j = 0; j < c.features.size(); ++j)
            printf("  %-20s %+10.4f %12.6g %12.6g%s\n", c.features[j].c_str(), c.weights[j], c.mean[j],
                   c.sd[j], c.sd[j] > 0 ? "" : "   dropped: constant on the training set");
        printf("  %-20s %+10.4f\n", "bias", c.bias);
    }
    if (!c.model.empty()) printf("  for model %s\n", c.model.c_str());
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
    CLI::App* sub = app.add_subcommand("sample",
                                       "N samples of one prompt decoded together (shared prompt cache), "
                                       "scored; choose one answer or abstain");
    add_model_options(sub, o->model);
    add_token_coe_options(sub, o->coe);
    sub->add_option("-p,--prompt", o->prompt, "the user message")->required();
    sub->add_option("-s,--system", o->system, "system message");
    sub->add_option("-n,--samples", o->sample.n, "samples N")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    sub->add_option("--max-tokens", o->sample.max_tokens, "tokens per sample at most")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    sub->add_option("--template", o->chat_template,
                    "chat template: auto, chatml, qwen2, qwen3, deepseek-r1, llama3")
        ->capture_default_str();
    sub->add_option("--think", o->think, "thinking mode: on, off, default")->capture_default_str();
    sub->add_option("--temp", o->sample.temperature, "sampling temperature")->capture_default_str();
    sub->add_option("--top-k", o->sample.top_k, "top-k filter (0: off)")->capture_default_str();
    sub->add_option("--top-p", o->sample.top_p, "top-p filter (1: off)")->capture_default_str();
    sub->add_option("--seed", o->sample.seed, "sampling seed (sample i uses seed + i)")
        ->capture_default_str();
    sub->add_option("--matcher", o->sample.matcher,
                    "answer extraction: last_number, number_after_answer, boxed, choice_letter")
        ->capture_default_str();
    sub->add_option("--reference", o->sample.reference,
                    "reference answer: adds \"correct\" to each JSONL line");
    sub->add_option("--strategy", o->sample.strategy,
                    "first, best (best-of-N by score), majority, weighted (score-weighted vote)")
        ->capture_default_str();
    sub->add_option(
           "--score", o->sample.score,
           "selection score (kv_coe_r, kv_coe_c, hs_coe_c, max_prob, ...); a calibration file names its own")
        ->capture_default_str();
    sub->add_option("--calibration", o->calibration,
                    "calibration file, or 'auto': <model>.calibration.<score>.json");
    sub->add_option(
        "--abstain-below", o->sample.abstain_below,
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
    auto p = std::make_shared<kvlens_eval_sample_params>(kvlens_eval_sample_default_params());
    auto ns = std::make_shared<std::string>("1,4,8");
    auto scores = std::make_shared<std::string>("kv_coe_r,kv_coe_c,hs_coe_c,max_prob,inv_ppl");
    // data_dir: kvlens_data_dir(); --data-dir overrides
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
    add_rescore_flag(ev, p->rescore);
    ev->callback([ev, p, ns, scores, coe_opts] {
        kvlens_eval_sample_params q = *p;
        q.coe_layers = coe_opts->layers;
        q.coe_kv_part = coe_opts->kv_part;
        q.coe_positions = coe_opts->positions;
        q.coe_head_agg = coe_opts->head_agg;
        q.ns = with_flag("--n", [&] { return parse_int_list(*ns); });
        q.scores = parse_name_list(*scores);
        // main() keeps argv to itself; the given options, as parsed, stand in for the command line.
        q.command_line = "kvlens eval sample";
        for (const CLI::Option* opt : ev->get_options()) {
            if (opt->count() == 0 || opt->get_name() == "--help") continue;
            if (opt->get_expected_max() == 0) {  // a flag: its name alone
                q.command_line += " " + opt->get_name();
                continue;
            }
            for (const std::string& v : opt->results()) {
                const bool quote = v.find_first_of(" \t\"'$") != std::string::npos || v.empty();
                q.command_line += " " + opt->get_name() + " " + (quote ? "'" + v + "'" : v);
            }
        }
        check(kvlens_eval_sample(q), coe_flag_names());
    });
    return sub;
}

}  // namespace kvlens::cli
