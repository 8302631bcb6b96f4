// KVClassifier (method.md section 3): predicts from the KV cache how hard a question is (0..100), and so
// whether a hybrid reasoning model should answer fast (empty think block) or slow (thinking).
//
// Everything here works without a model: labels, the feature configuration (which pooling of the KV cache the
// classifier reads), the MLP and its training, the router file, and the routing / switching policy. Feature
// extraction is a KvPool with router_pool_spec(); the same spec must be used at training and at inference
// time, which is why the router file records it together with the model shape and the chat template.
//
// Model: Linear(F, hidden) -> ReLU -> Linear(hidden, 1), MSE on the label, Adam. Two training presets:
//   paper  as the published script: lr 1e-5, batch 1024, raw features, targets 0..100, a fixed number
//          of epochs (100 unless set). The script has no held-out split; we still hold one out, to report
//          on, but do not stop on it. On a few hundred examples it barely moves in 100 epochs.
//   tuned  for a few hundred to a few thousand examples: features standardised with the training split's
//          mean and sd, targets / 100, AdamW lr 1e-3, batch 64, early stopping on validation MSE
// Predictions are always on the 0..100 scale (not clamped).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "capture/pooling.h"

namespace kvlens {

// ---- labels ---------------------------------------------------------------------------------------------

// 0: fast correct and fast output < long_tokens tokens; 25: fast correct but >= long_tokens; 75: fast wrong
// and slow correct; 100: both wrong. Throws Error on negative fast_tokens or long_tokens < 1.
// Windows along an answer (router label --windows) use the same rule: inside a think block the "fast"
// answer is the one given when the block is closed there (the cut probe), so 0 means "the answer is settled,
// switching to fast now is safe"; windows of a fast answer get the question's label.
int difficulty_label(bool fast_correct, int fast_tokens, bool slow_correct, int long_tokens = 128);

// ---- features -------------------------------------------------------------------------------------------

// The last seq_len positions of the last n_layers layers. The paper's pairs are the presets.
struct RouterFeatures {
    int seq_len = 32;
    int n_layers = 8;
};
// "32/8" | "64/4" | "128/2"; else Error naming the value.
RouterFeatures parse_router_preset(const std::string& s);
std::string to_string(const RouterFeatures& f);  // "32/8"

// kv_cat, pos_agg sum, head_agg flatten, layer_agg mean, layers -n..-1 (n = min(n_layers, model_n_layer)),
// window seq_len. Features then have router_feature_width(n_head_kv, head_dim) = 2 * n_head_kv * head_dim
// floats. Throws Error on non-positive sizes.
PoolSpec router_pool_spec(const RouterFeatures& f, int model_n_layer);
int router_feature_width(int n_head_kv, int head_dim);

// ---- training parameters --------------------------------------------------------------------------------

// Defaults are the "tuned" preset.
struct RouterTrainParams {
    std::string preset = "tuned";  // recorded in the router file; the fields below are what counts
    int hidden = 512;
    double lr = 1e-3;
    int batch = 64;              // the last minibatch of an epoch may be smaller
    int epochs = 200;            // at most
    int patience = 15;           // stop after this many epochs without a new best validation MSE; 0: never
    bool restore_best = true;    // return the best validation epoch's weights, not the last epoch's
    double weight_decay = 1e-4;  // decoupled (AdamW, as torch.optim.AdamW), on the weight matrices only
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    bool standardize = true;    // features -> (x - mean) / sd of the training split
    double target_scale = 100;  // the network learns label / target_scale
    double val_fraction = 0.2;  // held out; stratified by label when labels take at most 16 values
    uint64_t seed = 42;         // init, split and minibatch order
    int threads = 0;            // <= 0: all hardware threads; results do not depend on it (not recorded)
};
// "paper" | "tuned"; else Error naming the value.
RouterTrainParams router_train_preset(const std::string& name);

struct TrainReport {
    double train_mse = 0, val_mse = 0;   // of the returned weights, 0..100 scale
    double val_mse_baseline = 0;         // predicting the training split's mean label, for comparison
    int epochs_run = 0, best_epoch = 0;  // epochs are counted from 1
    std::vector<double> val_curve;       // validation MSE after each epoch
    int n_train = 0, n_val = 0;
    std::vector<int> val_rows;  // which examples were held out (not saved in the router file)
};

// ---- the MLP --------------------------------------------------------------------------------------------

// w1 is stored input-major (row k: feature k's weight to every hidden unit, i.e. torch's weight transposed)
// so that the kernels read contiguous hidden units (vectorised blocks of 16) for one input.
struct MlpWeights {
    int n_in = 0, n_hidden = 0;
    std::vector<float> w1;  // n_in x n_hidden
    std::vector<float> b1;  // n_hidden
    std::vector<float> w2;  // n_hidden
    float b2 = 0;
};

// torch.nn.Linear's init: weights and biases uniform in +-1/sqrt(fan_in), deterministic from the seed.
MlpWeights mlp_init(int n_in, int n_hidden, uint64_t seed);
// Network outputs of n rows (n_in floats each, already standardised). Results do not depend on `threads`.
void mlp_forward(const MlpWeights& w, const float* x, int n, float* out, int threads = 1);
// Mean squared error of the outputs against y (already scaled) over the n rows; if grad is given, its
// gradient with respect to every parameter (same layout as the weights).
double mlp_loss_grad(const MlpWeights& w, const float* x, const float* y, int n, MlpWeights* grad,
                     int threads = 1);

struct AdamState {
    MlpWeights m, v;  // first and second moments (zero-initialised on the first step)
    int64_t t = 0;
};
// One AdamW step with p.lr, p.beta1, p.beta2, p.eps, p.weight_decay (torch.optim.AdamW's arithmetic).
void adam_step(MlpWeights& w, const MlpWeights& grad, AdamState& s, const RouterTrainParams& p);

class KvClassifier {
public:
    MlpWeights net;
    std::vector<float> mean, sd;  // standardisation of the training split; both empty: raw features
    float out_scale = 1;          // prediction = out_scale * network output (the target scale)

    int n_features() const { return net.n_in; }
    // Difficulty on the 0..100 scale for n_features() floats.
    float predict(const float* features) const;
    // n rows at once (identical results to predict() row by row).
    void predict(const float* x, int n, float* out) const;
};

// x: n rows of n_features floats, row-major; y: n labels in [0, 100]. `groups` (n ids) keeps rows of one
// group, e.g. the windows along one question's answers, on the same side of the held-out split, which is
// then stratified by the label of each group's first row. Throws Error on mismatched sizes, fewer than 2
// examples (groups), non-finite values, labels outside [0, 100] or bad parameters.
KvClassifier train_kv_classifier(const std::vector<float>& x, int n_features, const std::vector<float>& y,
                                 const RouterTrainParams& p, TrainReport* report = nullptr,
                                 const std::vector<int>* groups = nullptr);

// ---- the router file ------------------------------------------------------------------------------------

// JSON, "format": "kvlens-router", "version": 1. Records what the classifier was trained for (model arch,
// n_layer, KV shape, chat template, feature config and its resolved pooling), how (train params, report),
// and the weights (w1 in torch layout, hidden x n_features; floats written with enough digits to read back
// exactly, so a loaded router predicts bit-identically).
struct RouterFile {
    static constexpr int kVersion = 1;
    std::string arch;
    int n_layer = 0, n_head_kv = 0, head_dim = 0;
    std::string chat_template;  // the template's name
    RouterFeatures features;
    PoolSpec pool;  // router_pool_spec(features, n_layer); checked on save and load
    RouterTrainParams train;
    TrainReport report;
    std::string source;  // where the training data came from
    KvClassifier classifier;
    std::string origin;  // the file it was loaded from (for messages); not saved
};

std::string router_to_json(const RouterFile& r);
// Throws Error naming `origin` and the problem (not JSON, wrong format or version, missing field, sizes that
// do not fit the recorded model, pooling that does not match the feature config, non-finite weights).
RouterFile router_from_json(const std::string& text, const std::string& origin);
void save_router(const std::string& path, const RouterFile& r);
RouterFile load_router(const std::string& path);

// Throws Error naming the router file and what differs, e.g. "router 'r.json' was trained for qwen3 with 28
// layers, KV width 1024 (8 x 128), template 'qwen3'; this model is llama with 30 layers, KV width 192 (3 x
// 64), template 'llama3'".
void check_router_for_model(const RouterFile& r, const std::string& arch, int n_layer, int n_head_kv,
                            int head_dim, const std::string& template_name);

// ---- routing and switching ------------------------------------------------------------------------------

enum class ThinkChoice { Fast, Slow };
const char* to_string(ThinkChoice c);  // "fast" | "slow"

struct RoutePolicy {
    float route_threshold = 50;  // d < threshold: fast
    float delta = 20;      // switching hysteresis: slow -> fast below threshold - delta, fast -> slow above
                           // threshold + delta
    int check_every = 16;  // generated tokens between two windowed predictions
};

// A NaN difficulty routes to slow and never switches (thinking is the safe default).
ThinkChoice route(float d, const RoutePolicy& p);
bool should_switch(ThinkChoice current, float d, const RoutePolicy& p);

}  // namespace kvlens
