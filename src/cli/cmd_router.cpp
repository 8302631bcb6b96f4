// kvlens router label | train | eval: the fast/slow KV classifier (method.md 3).
#include <cstdlib>

#include "cli/common.h"

namespace kvlens::cli {

namespace {

std::string data_dir_default() {
    return kvlens_data_dir();
}

void add_dataset_options(CLI::App* sub, std::string& model, std::string& dataset, std::string& data_dir,
                         std::string& out, int& limit, std::string& shard, std::string& part,
                         double& dev_fraction, int& max_tokens, int& n_ctx, int& threads, std::string& tmpl,
                         std::string& kv_source) {
    sub->add_option("-m,--model", model,
                    "GGUF model file (a hybrid reasoning model, or any model when the dataset config makes "
                    "it hybrid by its prompt: 'hybrid')")
        ->required();
    sub->add_option("--dataset", dataset, "built-in dataset name or a dataset config .json")->required();
    sub->add_option("--data-dir", data_dir, "directory of the built-in dataset configs (env KVLENS_DATA_DIR)")
        ->capture_default_str();
    sub->add_option("-o,--out", out, "output directory; reruns resume")->required();
    sub->add_option("--limit", limit,
                    "first N questions (0: all); chosen before --shard, so the shards of a run partition "
                    "exactly the questions of the one-machine run")
        ->check(CLI::Range(0, 1 << 30))
        ->capture_default_str();
    sub->add_option("--shard", shard,
                    "I/N: only the questions whose id hashes to shard I of N (0 <= I < N); run every I, on "
                    "any machines, then join the directories with kvlens eval merge");
    sub->add_option("--part", part,
                    "dev | test | all: only the questions of that part of the split by id (label and train "
                    "on dev, report on test; chosen after --limit, before --shard)")
        ->check(CLI::IsMember({"dev", "test", "all"}))
        ->capture_default_str();
    sub->add_option("--dev-fraction", dev_fraction, "the split's development fraction")
        ->check(CLI::Range(0.001, 0.999))
        ->capture_default_str();
    sub->add_option("-n,--max-tokens", max_tokens,
                    "sampled tokens per answer at most (0: the dataset config's)")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
    sub->add_option("--ctx", n_ctx, "context size (0: longest prompt + max tokens + 32)")
        ->check(CLI::Range(0, 1 << 22))
        ->capture_default_str();
    sub->add_option("-t,--threads", threads, "CPU threads (0: all)")
        ->check(CLI::Range(0, 1024))
        ->capture_default_str();
    sub->add_option("--template", tmpl,
                    "chat template: auto, qwen3, deepseek-r1 (or any, with a prompted hybrid)")
        ->capture_default_str();
    add_kv_source_option(sub, kv_source);
}

}  // namespace

CLI::App* add_router_command(CLI::App& app, const std::string& command_line) {
    CLI::App* router =
        app.add_subcommand("router", "fast/slow thinking: label, train and evaluate the KV classifier");
    router->require_subcommand(1);

    auto lp = std::make_shared<kvlens_router_label_params>(kvlens_router_label_default_params());
    lp->command_line = command_line;
    lp->data_dir = data_dir_default();
    CLI::App* label = router->add_subcommand(
        "label",
        "run fast and slow mode on every question; store outputs, token counts, labels and KV features");
    add_dataset_options(label, lp->model_path, lp->dataset, lp->data_dir, lp->out_dir, lp->limit, lp->shard,
                        lp->part, lp->dev_fraction, lp->max_tokens, lp->n_ctx, lp->n_threads,
                        lp->chat_template, lp->kv_source);
    label->add_option("--preset", lp->preset, "feature window seq_len/n_layers: 32/8, 64/4, 128/2")
        ->capture_default_str();
    label->add_option("--long-tokens", lp->long_tokens, "a correct fast answer this long is labelled 25")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    label
        ->add_option("--windows", lp->windows,
                     "also label windows every N sampled tokens along both answers; inside the think block "
                     "the cut probe closes it there and answers (0: prompts only)")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
    label->add_option("--cut-tokens", lp->cut_max_tokens, "answer budget of the cut probe")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    label->callback([lp] { check(kvlens_router_label(*lp)); });

    auto tp = std::make_shared<kvlens_router_train_params>(kvlens_router_train_default_params());
    tp->command_line = command_line;
    auto epochs = std::make_shared<int>(0);
    auto lr = std::make_shared<double>(0);
    auto seed = std::make_shared<int64_t>(-1);
    CLI::App* train =
        router->add_subcommand("train", "train the KV classifier (MLP F -> 512 -> 1) on labelled prompts");
    train->add_option("--labels", tp->label_dirs, "output directories of kvlens router label (same model)")
        ->required();
    train->add_option("-o,--out", tp->out_path, "router file to write (JSON; a report goes to <out>.md)")
        ->required();
    train->add_option("--preset", tp->preset, "paper (lr 1e-5, batch 1024, raw features) or tuned")
        ->capture_default_str();
    train
        ->add_option("--windows", tp->windows,
                     "prompt: train on the prompts (method.md); all: also on the windows along the answers "
                     "(label --windows), which is what switching reads")
        ->check(CLI::IsMember({"prompt", "all"}))
        ->capture_default_str();
    train->add_option("--epochs", *epochs, "epochs at most (0: the preset's)")->check(CLI::Range(0, 1 << 20));
    train->add_option("--lr", *lr, "learning rate (0: the preset's)")->check(CLI::Range(0.0, 1.0));
    train->add_option("--seed", *seed, "seed for init, split and batches (default: the preset's)");
    train->callback([tp, epochs, lr, seed] {
        kvlens_router_train_params p = *tp;
        p.epochs = *epochs;
        p.lr = *lr;
        p.seed = *seed;
        check(kvlens_router_train(p), {{"preset", "--preset"}});
    });

    auto ep = std::make_shared<kvlens_router_eval_params>(kvlens_router_eval_default_params());
    ep->command_line = command_line;
    ep->data_dir = data_dir_default();
    CLI::App* eval = router->add_subcommand(
        "eval",
        "always-fast, always-slow, routed, routed + online switching (and thinking budgets, DEER exits): "
        "accuracy, tokens, wall-clock");
    add_dataset_options(eval, ep->model_path, ep->dataset, ep->data_dir, ep->out_dir, ep->limit, ep->shard,
                        ep->part, ep->dev_fraction, ep->max_tokens, ep->n_ctx, ep->n_threads,
                        ep->chat_template, ep->kv_source);
    eval->add_option("--router", ep->router_path, "router file (kvlens router train)")->required();
    eval->add_option("--check-every", ep->check_every, "tokens between two windowed predictions")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    eval->add_option("--route-threshold", ep->route_threshold, "predicted difficulty below which: fast")
        ->check(CLI::Range(0.0, 100.0))
        ->capture_default_str();
    eval->add_option("--switch-delta", ep->switch_delta, "switching hysteresis around the threshold")
        ->check(CLI::Range(0.0, 100.0))
        ->capture_default_str();
    eval->add_option("--long-tokens", ep->long_tokens, "for the labels of the classifier's confusion table")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    eval->add_option("--budgets", ep->budgets,
                     "also a row per thinking budget (--think budget:N: the end of the think block appended "
                     "after N think tokens), e.g. 64,128")
        ->delimiter(',')
        ->check(CLI::Range(1, 1 << 24));
    eval->add_option(
            "--deer", ep->deer_thresholds,
            "also a row per DEER exit threshold (--think deer:T: at each line break a trial answer on a "
            "copied sequence, exit when its mean token probability > T), e.g. 0.9,0.95")
        ->delimiter(',')
        ->check(CLI::Range(0.0, 1e6));
    eval->add_option("--deer-trial-tokens", ep->deer_trial_tokens, "tokens a DEER trial answer may take")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    eval->callback([ep] { check(kvlens_router_eval(*ep)); });
    return router;
}

}  // namespace kvlens::cli
