// kvlens eval coe: KV-CoE on a dataset, resumable, with a report.
#include <cstdlib>

#include "cli/common.h"

namespace kvlens::cli {

CLI::App* add_eval_command(CLI::App& app, const std::string& command_line) {
    CLI::App* eval = app.add_subcommand("eval", "evaluations that reproduce the paper's experiments");
    eval->require_subcommand(1);
    auto p = std::make_shared<kvlens_eval_coe_params>(kvlens_eval_coe_default_params());  // data_dir found
    p->command_line = command_line;
    CLI::App* coe = eval->add_subcommand("coe",
                                         "score every answer of a dataset with KV-CoE, hidden-state CoE and "
                                         "output baselines; report AUROC etc.");
    coe->add_option("-m,--model", p->model_path, "GGUF model file")->required();
    coe->add_option(
           "--dataset", p->dataset,
           "built-in dataset name (gsm8k, math500, commonsenseqa, mgsm-en, ...) or a dataset config .json")
        ->required();
    coe->add_option("--data-dir", p->data_dir,
                    "directory of the built-in dataset configs (env KVLENS_DATA_DIR)")
        ->capture_default_str();
    coe->add_option("-o,--out", p->out_dir,
                    "output directory (samples.jsonl, report.md, plots); reruns resume")
        ->required();
    coe->add_option("--limit", p->limit,
                    "first N samples of the dataset (0: all); chosen before --shard, so the shards of a run "
                    "partition exactly the samples of the one-machine run")
        ->check(CLI::Range(0, 1 << 30))
        ->capture_default_str();
    coe->add_option("--shard", p->shard,
                    "I/N: only the samples whose id hashes to shard I of N (0 <= I < N); run every I, on "
                    "any machines, then join the directories with eval merge");
    coe->add_option("-n,--max-tokens", p->max_tokens, "tokens per answer at most (0: the dataset config's)")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
    coe->add_option("--parallel", p->parallel,
                    "answers decoded together (continuous batching: a finished answer's slot takes the next "
                    "question)")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    coe->add_option("--ctx", p->n_ctx, "context size (0: parallel x (longest prompt + max tokens))")
        ->check(CLI::Range(0, 1 << 22))
        ->capture_default_str();
    coe->add_option("-t,--threads", p->n_threads, "CPU threads (0: all)")
        ->check(CLI::Range(0, 1024))
        ->capture_default_str();
    add_kv_source_option(coe, p->kv_source);
    add_batch_invariant_flag(coe, p->batch_invariant);
    auto coe_opts = std::make_shared<TokenCoeOptions>();
    add_token_coe_options(coe, *coe_opts);
    coe->add_option("--template", p->chat_template,
                    "chat template: auto, chatml, qwen2, qwen3, deepseek-r1, llama3")
        ->capture_default_str();
    coe->add_option("--think", p->think, "thinking mode: on, off, default")->capture_default_str();
    coe->add_option("--bootstrap", p->bootstrap, "bootstrap resamples for the AUROC interval")
        ->check(CLI::Range(10, 1000000))
        ->capture_default_str();
    coe->add_option("--seed", p->seed, "bootstrap seed")->capture_default_str();
    coe->add_option("--dev-fraction", p->dev_fraction,
                    "share of questions (by a hash of their id) in the development part, which chooses the "
                    "token-axis configuration and fits the combined model; the report is on the rest")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    add_rescore_flag(coe, p->rescore);
    coe->add_flag("--recompute-scores", p->recompute_scores,
                  "score the stored answers again from their tokens (one teacher-forced pass each) with this "
                  "command's --kv-source and --coe-* settings, which may differ from the run's; answers and "
                  "labels stay");
    coe->callback([p, coe_opts] {
        p->coe_layers = coe_opts->layers;
        p->coe_kv_part = coe_opts->kv_part;
        p->coe_positions = coe_opts->positions;
        p->coe_head_agg = coe_opts->head_agg;
        check(kvlens_eval_coe(*p), coe_flag_names());
    });

    struct MergeOptions {
        std::vector<std::string> dirs;
        std::string out_dir, command_line;
    };
    auto m = std::make_shared<MergeOptions>();
    m->command_line = command_line;
    CLI::App* merge = eval->add_subcommand(
        "merge",
        "join the output directories of the shards of an eval coe, eval sample, eval embed, router label or "
        "router eval run (--shard I/N) into the run one machine would have written: the same files, the "
        "report computed from all samples; refuses shards of other settings, missing or repeated shards, "
        "overlapping or missing samples (writing nothing)");
    merge->add_option("-o,--out", m->out_dir, "output directory (new or empty)")->required();
    merge->add_option("dirs", m->dirs, "the shards' output directories")->required();
    merge->callback([m] { check(kvlens_eval_merge(m->dirs, m->out_dir, m->command_line)); });
    return eval;
}

}  // namespace kvlens::cli
