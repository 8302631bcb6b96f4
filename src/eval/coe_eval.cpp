#include "eval/coe_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include "engine/batcher.h"
#include "engine/generate.h"
#include "eval/metrics.h"
#include "eval/relabel.h"
#include "eval/results_file.h"
#include "eval/shard.h"
#include "eval/split.h"
#include "eval/svg_plot.h"
#include "methods/calibration.h"
#include "methods/coe.h"
#include "util/error.h"
#include "util/progress.h"

namespace kvlens {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& coe_report_scores() {
    static const std::vector<std::string> names = {
        "kv_coe_r",      "kv_coe_c",      "kv_layer_coe_r",   "kv_layer_coe_c",
        "k_layer_coe_r", "k_layer_coe_c", "v_layer_coe_r",    "v_layer_coe_c",
        "hs_coe_r",      "hs_coe_c",      "max_prob",         "inv_ppl",
        "inv_entropy",   "neg_length",    "answer_line_prob", "answer_line_min_prob"};
    return names;
}

static std::string score_label(const std::string& s) {
    static const std::map<std::string, std::string> labels = {
        {"kv_coe_r", "KV-CoE-R (token axis)"},
        {"kv_coe_c", "KV-CoE-C (token axis)"},
        {"kv_layer_coe_r", "KV-CoE-R (layer axis, K;V)"},
        {"kv_layer_coe_c", "KV-CoE-C (layer axis, K;V)"},
        {"k_layer_coe_r", "KV-CoE-R (layer axis, K)"},
        {"k_layer_coe_c", "KV-CoE-C (layer axis, K)"},
        {"v_layer_coe_r", "KV-CoE-R (layer axis, V)"},
        {"v_layer_coe_c", "KV-CoE-C (layer axis, V)"},
        {"hs_coe_r", "HS-CoE-R (hidden, layer axis)"},
        {"hs_coe_c", "HS-CoE-C (hidden, layer axis)"},
        {"max_prob", "mean max-prob"},
        {"inv_ppl", "1/perplexity"},
        {"inv_entropy", "1/entropy"},
        {"neg_length", "length alone (shorter = correct)"},
        {"answer_line_prob", "answer line, geometric-mean prob"},
        {"answer_line_min_prob", "answer line, lowest token prob"}};
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
            {"think", p.think},
            {"coe_version", 2},  // token-axis KV-CoE and its grid: records of version 1 lack them
            {"token_coe", to_string(p.token_coe)}};
}

std::string token_grid_key(const TokenCoeSpec& s) {
    return s.layers + "|" + to_string(s.kv_part) + "|" + to_string(s.positions) + "|" + to_string(s.head_agg);
}

std::vector<TokenCoeSpec> token_coe_grid(int n_layer) {
    std::vector<std::string> layer_sets = {"all", "-4..-1", "-8..-1"};
    if (n_layer / 2 > 8) layer_sets.push_back("-" + std::to_string(n_layer / 2) + "..-1");
    std::vector<TokenCoeSpec> grid;
    for (const std::string& layers : layer_sets) {
        if (layers != "all" && std::stoi(layers.substr(1)) > n_layer) continue;  // tiny models
        for (KvPart part : {KvPart::KV, KvPart::K, KvPart::V})
            for (CoePositions pos : {CoePositions::Producer, CoePositions::Generated})
                for (HeadAgg head : {HeadAgg::Flatten, HeadAgg::Mean})
                    grid.push_back({layers, part, pos, head});
    }
    return grid;
}

// The K/V source joins the identity only when it is not the default, so that existing runs still resume.
static json with_kv_source(json identity, const std::string& kv_source) {
    if (parse_capture_source(kv_source) != CaptureSource::Graph) identity["kv_source"] = kv_source;
    return identity;
}

// Every configuration of the token-axis grid for one sequence, subscribed to the session's capture.
static std::vector<std::unique_ptr<TokenCoe>> subscribe_grid(Session& session,
                                                             const std::vector<TokenCoeSpec>& grid,
                                                             llama_seq_id seq, int n_prompt) {
    std::vector<std::unique_ptr<TokenCoe>> out;
    for (const TokenCoeSpec& spec : grid) {
        out.push_back(std::make_unique<TokenCoe>(session.model().info(), seq, n_prompt, spec));
        session.capture().subscribe(out.back().get());
    }
    return out;
}

static void unsubscribe_grid(Session& session, std::vector<std::unique_ptr<TokenCoe>>& grid) {
    for (auto& t : grid) session.capture().unsubscribe(t.get());
    grid.clear();
}

// The score fields of an answer's record: every score, the grid, the chains' steps and statuses.
static void put_scores(json& rec, const CoeScorer& scorer, const std::vector<std::unique_ptr<TokenCoe>>& grid,
                       const std::vector<llama_token>& output, const std::vector<StepStats>& steps) {
    const CoeResult r = scorer.result(steps, output);
    json grid_scores = json::object();
    for (const auto& t : grid) {
        const CoeScores gs = t->scores();
        grid_scores[token_grid_key(t->spec())] = {gs.r, gs.c};
    }
    rec["n_producer"] = r.n_producer;
    rec["scores"] = r.named();
    rec["token_grid"] = grid_scores;
    rec["kv_status"] = coe_status_string(r.kv.status);
    rec["kv_layer_steps"] = {
        {"m", r.kv_layer.m}, {"a", r.kv_layer.a}, {"status", coe_status_string(r.kv_layer.status)}};
    rec["hs_steps"] = {{"m", r.hs.m}, {"a", r.hs.a}, {"status", coe_status_string(r.hs.status)}};
    rec["coe_state_bytes"] = scorer.state_bytes();
}

// The run.json of an earlier run in out_dir, or null.
static json previous_run_info(const std::string& out_dir) {
    const fs::path path = fs::path(out_dir) / "run.json";
    if (!fs::exists(path)) return nullptr;
    try {
        std::ifstream f(path);
        return json::parse(f);
    } catch (const std::exception& e) {
        throw Error("'" + path.string() + "': invalid JSON (" + e.what() + ")");
    }
}

// --recompute-scores may change how answers are scored (K/V source, kv_coe_* configuration), nothing else.
static std::string open_run_dir_for_recompute(const std::string& out_dir, const json& identity) {
    const std::string run_path = (fs::path(out_dir) / "run.json").string();
    const json info = previous_run_info(out_dir);
    if (info.is_null())
        throw Error("--recompute-scores: '" + run_path + "' does not exist: nothing to score again");
    if (!info.contains("identity")) throw Error("'" + run_path + "': no identity");
    json a = info["identity"], b = identity;
    for (json* j : {&a, &b}) {
        j->erase("kv_source");
        j->erase("token_coe");
    }
    if (a != b)
        throw Error("--recompute-scores: --out '" + out_dir +
                    "' holds a run with other settings than this command's (" + run_path +
                    "); only --kv-source and --coe-* may differ");
    return run_path;
}

// Every stored answer scored again from its tokens, each in one teacher-forced pass, with p's K/V source
// and configuration; answers, labels and timings stay. Resumable: the file is rewritten (atomically) every
// 20 answers, and an answer already scored again with these settings is skipped.
static void recompute_scores(ResultsFile& results, const Model& model, const CoeEvalParams& p) {
    std::vector<json> records = results.records();
    if (records.empty()) return;
    size_t longest = 0;
    for (const json& r : records) {
        if (!r.contains("prompt_tokens") || !r.contains("output_tokens"))
            throw Error("--recompute-scores: sample " + r["index"].dump() +
                        " has no prompt_tokens / output_tokens (written by an older kvlens)");
        longest = std::max(longest, r["prompt_tokens"].size() + r["output_tokens"].size());
    }
    SessionParams sp;
    sp.n_seq_max = 1;
    sp.n_ctx = (int)longest + 1;
    sp.n_threads = p.n_threads;
    sp.capture_source = parse_capture_source(p.kv_source);
    sp.n_batch = std::min(sp.n_ctx, 2048);
    Session session(model, sp);
    const std::vector<TokenCoeSpec> grid = token_coe_grid(model.info().n_layer);
    // scores_version 2 added the answer line's scores: an answer recomputed by an older kvlens is done again.
    const json settings = {
        {"kv_source", p.kv_source}, {"token_coe", to_string(p.token_coe)}, {"scores_version", 2}};
    auto done = [&](const json& r) {
        if (!r.contains("scores_recomputed")) return false;
        const json& s = r["scores_recomputed"];
        return s.value("kv_source", "") == settings["kv_source"] &&
               s.value("token_coe", "") == settings["token_coe"] && s.value("scores_version", 0) == 2;
    };
    const int64_t n_done = std::count_if(records.begin(), records.end(), done);
    if (n_done == (int64_t)records.size()) return;
    Progress progress("eval coe: recomputing scores", (int64_t)records.size(), n_done);
    int unsaved = 0;
    for (json& r : records) {
        if (done(r)) continue;
        const auto prompt = r["prompt_tokens"].get<std::vector<llama_token>>();
        const auto output = r["output_tokens"].get<std::vector<llama_token>>();
        session.clear();
        CoeScorer scorer(session, 0, (int)prompt.size(), p.token_coe);
        std::vector<std::unique_ptr<TokenCoe>> g = subscribe_grid(session, grid, 0, (int)prompt.size());
        const auto t0 = std::chrono::steady_clock::now();
        const Generation forced = score_forced(session, 0, prompt, output);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (forced.output != output)
            throw Error(
                "--recompute-scores: sample " + r["index"].dump() +
                ": its output has an end-of-generation token before its end (not this model's answer?)");
        put_scores(r, scorer, g, forced.output, forced.steps);
        r["scores_recomputed"] = settings;
        r["scores_recomputed"]["how"] = "one teacher-forced pass";
        r["scores_recomputed"]["seconds"] = secs;
        unsubscribe_grid(session, g);
        progress.add(1);
        if (++unsaved == 20) {
            results.replace_all(records);
            unsaved = 0;
        }
    }
    progress.finish();
    results.replace_all(records);
}

void run_coe_eval(const CoeEvalParams& p) {
    const DatasetConfig cfg = load_dataset_config(p.dataset, p.data_dir);
    // The limit chooses the run's samples, the shard a part of them (eval/shard.h).
    const std::vector<Sample> all_samples = load_samples(cfg, p.limit);
    if (all_samples.empty()) throw Error("dataset '" + cfg.name + "': no samples");
    const ShardSpec shard = parse_shard(p.shard);
    const std::vector<Sample> samples = select_shard(all_samples, shard);
    const int max_tokens = p.max_tokens > 0 ? p.max_tokens : cfg.max_tokens;
    if (p.parallel < 1) throw Error("--parallel: must be >= 1");
    const ChatTemplate tmpl_flag = parse_chat_template(p.chat_template);
    const ThinkMode think = parse_think_mode(p.think);

    // A rerun continues only the same experiment.
    json identity = with_kv_source(run_identity(p, cfg, max_tokens), p.kv_source);
    if (p.batch_invariant) identity["batch_invariant"] = true;  // other answers than a batched run's
    if (shard.active()) identity["shard"] = to_string(shard);
    const std::string run_path = p.recompute_scores ? open_run_dir_for_recompute(p.out_dir, identity)
                                                    : open_run_dir(p.out_dir, identity);
    const json prev_info = previous_run_info(p.out_dir);
    ResultsFile results((fs::path(p.out_dir) / "samples.jsonl").string(), "index");
    relabel_results(results, cfg.matcher, p.rescore, "eval coe", p.out_dir);
    std::vector<const Sample*> todo;
    for (const Sample& s : samples)
        if (!results.done(s.index)) todo.push_back(&s);

    set_verbose(false);
    Model model(ModelParams{p.model_path, -1, p.batch_invariant});
    const ModelInfo& mi = model.info();
    const ChatTemplate tmpl =
        tmpl_flag == ChatTemplate::Auto ? detect_chat_template(mi.chat_template, mi.arch) : tmpl_flag;
    if (p.recompute_scores) recompute_scores(results, model, p);

    // Measured accumulator state of one sequence at 100 and 2000 producer positions, next to the bytes
    // the hidden-state trajectory would take if stored per token.
    json memory;
    for (int n : {100, 2000}) {
        TokenCoe tok(mi, 0, 1, p.token_coe);
        KvLayerCoe kv(mi, 0, 1);
        HiddenCoe hs(mi, 0, 1);
        std::vector<float> row(std::max(mi.kv_width(), mi.n_embd));
        for (int t = 0; t < n; ++t) {
            for (size_t i = 0; i < row.size(); ++i) row[i] = (float)((t * 31 + i * 7) % 13) - 6.0f;
            for (int l = 0; l < mi.n_layer; ++l) {
                tok.add_row(Tap::K, l, t, row.data());
                tok.add_row(Tap::V, l, t, row.data());
                kv.pool().add_k(l, row.data());
                kv.pool().add_v(l, row.data());
                hs.add_row(l, row.data());
            }
            hs.add_row(-1, row.data());
        }
        memory[std::to_string(n)] = {
            {"kv_coe_state_bytes", tok.state_bytes()},
            {"kv_layer_coe_state_bytes", kv.state_bytes()},
            {"hs_coe_state_bytes", hs.state_bytes()},
            // The cache's own K and V rows for these tokens (F16, every layer).
            {"kv_cache_bytes", (size_t)mi.n_layer * 2 * mi.kv_width() * 2 * (size_t)n},
            {"hidden_trajectory_bytes", hidden_trajectory_bytes(mi.n_layer, mi.n_embd, n)}};
    }

    json run_info = {
        {"identity", identity},
        {"model_info",
         {{"arch", mi.arch},
          {"name", mi.name},
          {"n_layer", mi.n_layer},
          {"n_embd", mi.n_embd},
          {"n_head_kv", mi.n_head_kv},
          {"head_dim", mi.head_dim}}},
        {"chat_template_used", to_string(tmpl)},
        {"n_samples", samples.size()},
        {"command", p.command_line},  // the decoding (see below for a recomputation)
        {"kvlens_version", KVLENS_VERSION},
        {"llama_cpp", KVLENS_LLAMA_ORIGIN},
        {"memory", memory},
        {"eval", "coe"},
        // What the report needs beyond the identity, so that eval merge can write it.
        {"report", {{"bootstrap", p.bootstrap}, {"seed", p.seed}, {"dev_fraction", p.dev_fraction}}}};
    if (shard.active()) run_info["shard"] = shard_run_info(shard, all_samples);
    // A recomputation keeps the command that decoded the answers and records its own beside it.
    if (p.recompute_scores) {
        run_info["command"] = prev_info.value("command", std::string());
        run_info["scores_recomputed_by"] = p.command_line;
    } else if (!prev_info.is_null() && prev_info.contains("scores_recomputed_by")) {
        run_info["scores_recomputed_by"] = prev_info["scores_recomputed_by"];
    }
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
        // Batch-invariant kernels need one more sequence id: it holds finished answers' cells (Batcher).
        sp.n_seq_max = p.parallel + (p.batch_invariant ? 1 : 0);
        sp.n_ctx = p.n_ctx > 0 ? p.n_ctx : (int)(p.parallel * (longest + max_tokens + 1));
        sp.n_threads = p.n_threads;
        sp.capture_source = parse_capture_source(p.kv_source);
        sp.batch_invariant = p.batch_invariant;
        sp.n_batch = std::min(sp.n_ctx, 2048);
        Session session(model, sp);
        const std::vector<TokenCoeSpec> grid = token_coe_grid(mi.n_layer);

        // Continuous batching: `parallel` answers decode together and a finished one's slot takes the next
        // question at once (its prompt is prefilled in the next step), so a long answer never holds the
        // others' slots idle. Each slot has its own scorers, subscribed for its sequence id while it runs.
        struct Slot {
            const Sample* sample = nullptr;
            std::unique_ptr<CoeScorer> scorer;
            std::vector<std::unique_ptr<TokenCoe>> grid;  // every configuration, for the development part
            std::chrono::steady_clock::time_point joined;
            double share = 0;  // this answer's share of the decode wall time (each step's split evenly)
            double batch_sum = 0;
            int steps = 0;
        };
        Batcher batcher(session, /*free_finished=*/true, /*keep_cell_order=*/p.batch_invariant);
        std::vector<Slot> slots(p.parallel);
        const int n_slots = std::min(p.parallel, batcher.n_seq_ids());

        Progress progress("eval coe " + cfg.name, (int64_t)samples.size(),
                          (int64_t)(samples.size() - todo.size()));
        int n_correct = 0, n_new = 0;
        size_t next = 0;
        while (next < todo.size() || !batcher.empty()) {
            for (int seq = 0; seq < n_slots && next < todo.size(); ++seq) {
                Slot& slot = slots[seq];
                if (slot.sample) continue;
                // Wait for cells while others run (a small --ctx); alone, join() names what does not fit.
                const bool fits =
                    batcher.cells_used() + (int64_t)prompts[next].size() + 1 <= session.n_ctx() &&
                    batcher.can_join(prompts[next].size(), max_tokens);
                if (!fits && !batcher.empty()) break;
                slot.sample = todo[next];
                slot.scorer =
                    std::make_unique<CoeScorer>(session, seq, (int)prompts[next].size(), p.token_coe);
                slot.grid = subscribe_grid(session, grid, seq, (int)prompts[next].size());
                slot.joined = std::chrono::steady_clock::now();
                slot.share = slot.batch_sum = 0;
                slot.steps = 0;
                batcher.join(seq, prompts[next], max_tokens, make_sampler(SamplingParams{}, 0));
                ++next;
            }
            const int in_step = batcher.size();
            const auto t0 = std::chrono::steady_clock::now();
            std::vector<Generation> finished = batcher.step();
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            for (Slot& slot : slots) {
                if (!slot.sample) continue;
                slot.share += dt / in_step;
                slot.batch_sum += in_step;
                ++slot.steps;
            }
            for (const Generation& g : finished) {
                Slot& slot = slots[g.seq];
                const Sample& s = *slot.sample;
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
                    // Wall time: from joining to the last token, and this answer's share of the decoding
                    // (the shares of all answers sum to the run's decoding time).
                    {"seconds",
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - slot.joined).count()},
                    {"decode_seconds", slot.share},
                    {"mean_batch_size", slot.steps ? slot.batch_sum / slot.steps : 0.0},
                    {"prompt_tokens", g.prompt},
                    {"output_tokens", g.output}};
                put_scores(rec, *slot.scorer, slot.grid, g.output, g.steps);
                results.append(rec);
                n_correct += correct;
                ++n_new;
                progress.add(1, "acc " + fmt(100.0 * n_correct / n_new, 1) + "%");
                unsubscribe_grid(session, slot.grid);
                slot = Slot{};
            }
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
    if (!records.empty()) write_coe_report(p.out_dir, records, run_info, p.bootstrap, p.seed, p.dev_fraction);
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

namespace {

// One score column of the report, split into the development and test parts.
struct Column {
    std::string name, label;
    std::vector<double> dev, test;
};

bool has_both(const std::vector<int>& labels) {
    const int pos = (int)std::count(labels.begin(), labels.end(), 1);
    return pos > 0 && pos < (int)labels.size();
}

std::string f3(double v) {
    return std::isfinite(v) ? fmt(v, 3) : "n/a";
}

}  // namespace

const std::vector<std::string>& combined_features() {
    static const std::vector<std::string> f = {"kv_coe_r", "kv_coe_c", "kv_layer_coe_r", "kv_layer_coe_c",
                                               "max_prob", "inv_ppl",  "inv_entropy",    "neg_length"};
    return f;
}

void write_coe_report(const std::string& out_dir, const std::vector<json>& records, const json& run_info,
                      int bootstrap, uint64_t seed, double dev_fraction) {
    const fs::path dir(out_dir);
    // The split depends on the question id only (eval/split.h): a sample keeps its part whatever the limit.
    std::vector<size_t> dev_i, test_i;
    std::vector<int> labels, dev_y, test_y;
    std::vector<double> dev_len, test_len;
    int n_truncated = 0;
    for (size_t i = 0; i < records.size(); ++i) {
        const json& r = records[i];
        std::string id = r.value("id", std::string());
        if (id.empty()) id = std::to_string(r["index"].get<int>());
        const int y = r["correct"].get<bool>() ? 1 : 0;
        const double len = std::max(1.0, (double)r["n_output_tokens"].get<int64_t>());
        labels.push_back(y);
        n_truncated += r["truncated"].get<bool>();
        if (split_part(id, dev_fraction) == Part::Dev) {
            dev_i.push_back(i);
            dev_y.push_back(y);
            dev_len.push_back(len);
        } else {
            test_i.push_back(i);
            test_y.push_back(y);
            test_len.push_back(len);
        }
    }
    const int n = (int)labels.size();
    const int n_correct = (int)std::count(labels.begin(), labels.end(), 1);
    const int test_correct = (int)std::count(test_y.begin(), test_y.end(), 1);
    const int dev_correct = (int)std::count(dev_y.begin(), dev_y.end(), 1);
    const bool dev_ok = has_both(dev_y), test_ok = has_both(test_y);

    auto column = [&](const std::string& name, const std::string& label,
                      const std::function<double(const json&)>& get) {
        Column c{name, label, {}, {}};
        for (size_t i : dev_i) c.dev.push_back(get(records[i]));
        for (size_t i : test_i) c.test.push_back(get(records[i]));
        return c;
    };
    std::vector<Column> cols;
    for (const std::string& name : coe_report_scores()) {
        // Scores added later (the answer line) are missing from older runs' records: no row then.
        if (!std::all_of(records.begin(), records.end(),
                         [&](const json& r) { return r["scores"].contains(name); }))
            continue;
        cols.push_back(
            column(name, score_label(name), [&](const json& r) { return r["scores"][name].get<double>(); }));
    }

    // The product's default configuration, when this run was made with another one (it is in the grid).
    const std::string default_key = token_grid_key(TokenCoeSpec{});
    if (!records.empty() && records[0].contains("token_grid") &&
        records[0]["token_grid"].contains(default_key) &&
        run_info["identity"].value("token_coe", std::string()) != to_string(TokenCoeSpec{})) {
        for (int which : {0, 1}) {
            const std::string rc = which == 0 ? "R" : "C";
            cols.push_back(
                column("kv_coe_default_" + std::string(which == 0 ? "r" : "c"),
                       "KV-CoE-" + rc + " (token axis, kvlens default `" + default_key + "`)",
                       [&](const json& r) { return r["token_grid"][default_key][which].get<double>(); }));
        }
    }

    // The token-axis configuration chosen on the development part (highest dev AUROC over the grid, R or C).
    json selected = nullptr;
    std::vector<std::vector<std::string>> grid_rows;
    if (!records.empty() && records[0].contains("token_grid")) {
        double best = -1;
        std::string best_key;
        int best_which = 0;
        for (const auto& [key, v] : records[0]["token_grid"].items()) {
            std::vector<std::string> row = {"`" + key + "`"};
            for (int which : {0, 1}) {
                std::vector<double> x;
                for (size_t i : dev_i) x.push_back(records[i]["token_grid"][key][which].get<double>());
                const double a = dev_ok ? auroc(x, dev_y) : NAN;
                row.push_back(f3(a));
                if (a > best) {
                    best = a;
                    best_key = key;
                    best_which = which;
                }
            }
            grid_rows.push_back(row);
        }
        if (!best_key.empty()) {
            const std::string rc = best_which == 0 ? "R" : "C";
            cols.push_back(
                column("kv_coe_dev", "KV-CoE-" + rc + " (token axis, chosen on dev: `" + best_key + "`)",
                       [&](const json& r) { return r["token_grid"][best_key][best_which].get<double>(); }));
            selected = {{"key", best_key}, {"score", rc}, {"dev_auroc", best}};
        }
    }

    // The combined confidence: a logistic model over the free signals, fitted on the development part.
    json combined = nullptr;
    std::string combined_note;
    if (dev_ok) {
        try {
            std::vector<std::vector<double>> rows;
            for (size_t i : dev_i) {
                std::vector<double> row;
                for (const std::string& f : combined_features())
                    row.push_back(records[i]["scores"][f].get<double>());
                rows.push_back(row);
            }
            const Calibration cal = fit_logistic(combined_features(), rows, dev_y);
            cols.push_back(column(
                "combined", "combined (logistic on the free signals, fit on dev)",
                [&](const json& r) { return cal.apply(r["scores"].get<std::map<std::string, double>>()); }));
            combined = json::parse(calibration_to_json(cal));
        } catch (const Error& e) {
            combined_note = e.what();
        }
    }

    // Test-part metrics per column.
    std::vector<std::vector<std::string>> rows;
    std::vector<Series> roc_series;
    json summary = {{"n", n},
                    {"n_correct", n_correct},
                    {"n_truncated", n_truncated},
                    {"dev_fraction", dev_fraction},
                    {"n_dev", dev_i.size()},
                    {"n_dev_correct", dev_correct},
                    {"n_test", test_i.size()},
                    {"n_test_correct", test_correct},
                    {"selected", selected},
                    {"combined", combined},
                    {"scores", json::object()}};
    int color = 0;
    for (const Column& c : cols) {
        if (!test_ok) {
            rows.push_back({c.label, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"});
            continue;
        }
        const BinaryMetrics m = binary_metrics(c.test, test_y);
        const AurocInterval ci = bootstrap_auroc(c.test, test_y, bootstrap, seed);
        const double binned = auroc_within_bins(c.test, test_y, test_len, 5);
        double resid = NAN;
        if (c.name != "neg_length" && !c.dev.empty()) {
            try {
                const LengthResidual fit = fit_length_residual(c.dev, dev_len);
                resid = auroc(residual_scores(c.test, test_len, fit), test_y);
            } catch (const Error&) {
                // a non-finite score: no residual
            }
        }
        rows.push_back({c.label, f3(m.auroc), "[" + f3(ci.lo) + ", " + f3(ci.hi) + "]", f3(m.aupr),
                        f3(m.fpr95), f3(m.prr), f3(binned), f3(resid)});
        summary["scores"][c.name] = {{"label", c.label},
                                     {"auroc", m.auroc},
                                     {"auroc_ci", {ci.lo, ci.hi}},
                                     {"aupr", m.aupr},
                                     {"fpr95", m.fpr95},
                                     {"prr", m.prr},
                                     {"auroc_within_length_bins", binned},
                                     {"auroc_length_residual", resid},
                                     {"dev_auroc", dev_ok ? auroc(c.dev, dev_y) : NAN}};
        const RocCurve roc = roc_curve(c.test, test_y);
        Series s;
        const size_t cut = c.label.find(", chosen on dev");  // the key is in the table, not the legend
        s.label = (cut == std::string::npos ? c.label : c.label.substr(0, cut) + ", chosen on dev)") + " (" +
                  f3(m.auroc) + ")";
        s.x = roc.fpr;
        s.y = roc.tpr;
        s.dashed = color >= 8;  // the palette has 8 colours
        roc_series.push_back(s);
        ++color;
    }

    // Does KV-CoE reach hidden-state CoE? Paired bootstrap of the AUROC difference on the test part.
    std::vector<std::string> verdicts;
    json verdict_json = json::array();
    auto col = [&](const std::string& name) -> const Column* {
        for (const Column& c : cols)
            if (c.name == name) return &c;
        return nullptr;
    };
    const std::pair<const char*, const char*> pairs[] = {{"kv_coe_r", "hs_coe_r"},
                                                         {"kv_coe_c", "hs_coe_c"},
                                                         {"kv_coe_dev", "hs_coe_c"},
                                                         {"kv_coe_dev", "hs_coe_r"}};
    for (const auto& [a, b] : pairs) {
        const Column *ca = col(a), *cb = col(b);
        if (!ca || !cb || !test_ok) continue;
        const double da = auroc(ca->test, test_y), db = auroc(cb->test, test_y);
        const AurocInterval d = bootstrap_auroc_difference(ca->test, cb->test, test_y, bootstrap, seed);
        const double lo = d.lo, hi = d.hi;
        const char* v = hi < 0   ? "no: below hidden-state CoE"
                        : lo > 0 ? "yes: above hidden-state CoE"
                                 : "yes: within the interval";
        verdicts.push_back("- " + ca->label + " " + f3(da) + " vs " + cb->label + " " + f3(db) +
                           ": difference " + f3(da - db) + " [" + f3(lo) + ", " + f3(hi) + "]: **" + v +
                           "**");
        verdict_json.push_back(
            {{"kv", a}, {"hs", b}, {"diff", da - db}, {"diff_ci", {lo, hi}}, {"verdict", v}});
    }
    summary["verdicts"] = verdict_json;

    std::ostringstream md;
    const json& id = run_info["identity"];
    md << "# KV-CoE evaluation: " << id["dataset"].get<std::string>() << "\n\n";
    md << "Command:\n\n```\n" << run_info.value("command", std::string()) << "\n```\n\n";
    if (run_info.contains("scores_recomputed_by"))
        md << "Scores recomputed from the stored answers (one teacher-forced pass each) by:\n\n```\n"
           << run_info["scores_recomputed_by"].get<std::string>() << "\n```\n\n";
    md << "- model: `" << fs::path(id["model"].get<std::string>()).filename().string() << "` ("
       << run_info["model_info"]["arch"].get<std::string>() << ", " << run_info["model_info"]["n_layer"]
       << " layers)\n";
    md << "- kvlens " << run_info["kvlens_version"].get<std::string>() << ", llama.cpp "
       << run_info["llama_cpp"].get<std::string>() << "\n";
    md << "- chat template: " << run_info["chat_template_used"].get<std::string>()
       << ", think: " << id["think"].get<std::string>() << ", greedy, max " << id["max_tokens"]
       << " tokens\n";
    md << "- kv_coe_* configuration: `" << id.value("token_coe", std::string("?")) << "`\n";
    md << "- matcher: " << id["matcher"].get<std::string>() << "; samples: " << n
       << ", correct: " << n_correct << " (accuracy " << fmt(n ? 100.0 * n_correct / n : 0, 1)
       << "%), cut by the token limit (counted wrong): " << n_truncated << "\n";
    const int n_relabelled = count_relabelled(records);
    if (n_relabelled > 0)
        md << "- relabelled: " << n_relabelled << " of " << n
           << " answers read differently by the matcher than when they were generated (`eval coe --rescore`; "
              "the first labels are under `relabelled_from` in samples.jsonl)\n";
    double seconds = 0;
    int timed = 0;
    for (const json& r : records) {
        if (r.contains("decode_seconds"))  // continuous batching: each step's time split among its answers
            seconds += r["decode_seconds"].get<double>();
        else if (r.contains("batch_seconds"))  // runs before it: static batches
            seconds += r["batch_seconds"].get<double>() / r["batch_size"].get<double>();
        else
            continue;
        ++timed;
    }
    if (timed > 0)
        md << "- decoding time: " << fmt(seconds, 0) << " s for " << timed
           << " answers (wall time; answers decoded together share it)\n";
    md << "- split by question id (FNV-1a hash, " << fmt(100 * dev_fraction, 0)
       << "% development): development " << dev_i.size() << " samples (" << dev_correct << " correct), test "
       << test_i.size() << " (" << test_correct << " correct, accuracy "
       << fmt(test_i.empty() ? 0 : 100.0 * test_correct / test_i.size(), 1) << "%)\n\n";
    md << "## Test part\n\nEvery number below is measured on the test part; the development part chose the "
          "token-axis configuration and fitted the combined model and the length regressions, nothing else. "
          "Correct answers are the positive class. AUROC with a bootstrap 95% interval ("
       << bootstrap << " resamples, seed " << seed
       << "); FPR95 = false-positive rate at 95% true-positive rate (lower is better); PRR = "
          "prediction-rejection "
          "ratio (1 perfect, 0 chance); *within length bins* = AUROC over pairs of answers in the same "
          "length "
          "quintile; *length residual* = AUROC of the score minus its regression on log(length) fitted on "
          "the "
          "development part: what the score adds beyond length.\n\n";
    md << markdown_table({"score", "AUROC", "95% CI", "AUPR", "FPR95", "PRR", "AUROC within length bins",
                          "AUROC length residual"},
                         rows)
       << "\n";
    if (!test_ok) md << "The test part lacks a class: the separation metrics are undefined.\n\n";
    if (!combined_note.empty()) md << "Combined model not fitted: " << combined_note << "\n\n";
    if (!dev_ok)
        md << "The development part lacks a class: no configuration is chosen and no combined model is "
              "fitted "
              "(their rows and verdicts are absent).\n\n";
    if (!verdicts.empty()) {
        md << "Does KV-CoE reach hidden-state CoE (paired bootstrap 95% interval of the AUROC "
              "difference)?\n\n";
        for (const std::string& v : verdicts) md << v << "\n";
        md << "\n";
    }
    if (!combined.is_null()) {
        md << "Combined model (standardised features, L2 ridge " << combined["ridge"] << "): ";
        const auto& fs_ = combined["features"];
        for (size_t j = 0; j < fs_.size(); ++j)
            md << (j ? ", " : "") << fs_[j].get<std::string>() << " "
               << fmt(combined["weights"][j].get<double>(), 2);
        md << "; bias " << fmt(combined["bias"].get<double>(), 2) << ".\n\n";
    }

    md << "## Memory of the score state per sequence\n\n";
    std::vector<std::vector<std::string>> mem_rows;
    for (const char* t : {"100", "2000"}) {
        const json& m = run_info["memory"][t];
        auto b = [&](const char* k) { return m.contains(k) ? std::to_string(m[k].get<size_t>()) : "n/a"; };
        mem_rows.push_back({t, b("kv_coe_state_bytes"), b("kv_layer_coe_state_bytes"),
                            b("hs_coe_state_bytes"), b("kv_cache_bytes"), b("hidden_trajectory_bytes")});
    }
    md << markdown_table({"generated tokens", "KV-CoE token axis (bytes)", "KV-CoE layer axis (bytes)",
                          "HS-CoE streaming (bytes)", "the KV cache itself, F16 (bytes)",
                          "hidden trajectory stored per token (bytes)"},
                         mem_rows)
       << "\nMeasured by feeding the accumulators 100 and 2000 rows; the KV rows themselves are the "
          "cache's.\n\n";

    if (!grid_rows.empty()) {
        md << "## Development part: the token-axis configurations\n\nAUROC on the " << dev_i.size()
           << " development samples (key: layers|kv_part|positions|head_agg). The highest, R or C, is the "
              "*chosen on dev* row above.\n\n";
        md << markdown_table({"configuration", "dev AUROC R", "dev AUROC C"}, grid_rows) << "\n";
    }
    md << "## Plots\n\n![ROC (test part)](roc.svg)\n\n![Layer-axis KV chain per layer "
          "step](layers-kv.svg)\n\n"
          "![Hidden chain per layer step](layers-hs.svg)\n";
    write_text_file((dir / "report.md").string(), md.str());
    write_text_file((dir / "summary.json").string(), summary.dump(2) + "\n");

    PlotSpec roc;
    roc.title = "ROC: " + id["dataset"].get<std::string>() + ", test part (correct = positive)";
    roc.x_label = "false-positive rate";
    roc.y_label = "true-positive rate";
    roc.x_min = roc.y_min = 0;
    roc.x_max = roc.y_max = 1;
    roc.diagonal = true;
    roc.width = 760;
    roc.height = 600;
    write_text_file((dir / "roc.svg").string(), svg_line_plot(roc, roc_series));

    for (const auto& [chain, title, file] :
         {std::tuple<const char*, const char*, const char*>{"kv_layer_steps", "layer-axis KV chain (K;V)",
                                                            "layers-kv.svg"},
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
