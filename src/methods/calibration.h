// Calibration: a map from raw scores to the probability that the answer is correct, fitted on a labelled
// run (e.g. the samples.jsonl of `kvlens eval coe` or `kvlens eval sample`).
//
// The direction is fitted, not assumed: a score whose AUROC on the training run is below 0.5 (KV-CoE on
// SmolLM2, docs/results/coe-smollm2-arith) gets direction -1, i.e. the probability decreases with the raw
// score. `direction` is recorded in the file and reported.
//   isotonic  one score; pool-adjacent-violators on the scores ordered by direction x raw; equal raw scores
//             are pooled first, so they always map to one value. Stored as knots (x ascending raw score, y
//             probability): two knots per block (its lowest and highest raw score), linear between blocks,
//             constant beyond the ends. On a training score the map returns exactly its block's accuracy.
//   platt     one score; p = 1 / (1 + exp(-(a x + b))), maximum likelihood (Newton, on standardised x, with a
//             tiny ridge so separable data stays finite). direction = sign(a).
//   logistic  several scores of the same answer ("features"); p = sigmoid(w . z + bias) with
//             z_j = (x_j - mean_j) / std_j standardised by the training set's mean and (population) std.
//             Maximum likelihood with an L2 ridge (ridge / 2) |w|^2 on w, not on the bias (scikit-learn's
//             LogisticRegression with C = 1 / ridge), by damped Newton: deterministic, and finite on
//             separable data. A feature with std 0 on the training set (or below 1e-12 |mean|: rounding)
//             carries no information: it is kept in the list with std 0 and weight 0 and takes no part in the
//             fit. Its score name is "combined" (or "combined:<name>"); direction is always +1 (p increases
//             with w . z).
//
// File (JSON, "format": "kvlens-calibration"): method, score, direction, x/y (isotonic) or a/b (platt) or
// features/mean/std/weights/bias/ridge (logistic), n, n_correct, train_auroc, source, optional part and
// model. "version" is 2 when the file has a logistic fit or a model record (older kvlens refuse it rather
// than apply it to any model), else 1; both are read. Default location, next to the model:
// <model path without .gguf>.calibration.<score>.json.
//
// The model a calibration was fitted for ("model": file, size, name, arch, n_layer; from the training run's
// run.json) is checked against the loaded model by generate, sample and serve (check_calibration_model).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace kvlens {

enum class CalibrationMethod { Isotonic, Platt, Logistic };
// "isotonic" | "platt" | "logistic"; else Error
CalibrationMethod parse_calibration_method(const std::string& s);
const char* to_string(CalibrationMethod m);

// The model a calibration was fitted for. Empty / negative fields were not recorded and are not compared.
struct CalibrationModel {
    std::string file;        // GGUF file name, without its directory
    int64_t size = -1;       // bytes
    std::string name, arch;  // general.name, general.architecture
    int n_layer = 0;
    bool empty() const { return file.empty() && size < 0 && name.empty() && arch.empty() && n_layer == 0; }
    std::string describe() const;  // "'m.gguf' (llama, 2 layers, 1234 bytes)"
};

struct Calibration {
    static constexpr int kVersion = 2;  // the newest written; 1 and 2 are read
    CalibrationMethod method = CalibrationMethod::Isotonic;
    std::string score;         // the raw score's name, e.g. "hs_coe_c"; logistic: "combined[:<name>]"
    int direction = 1;         // +1: probability increases with the raw score, -1: decreases
    std::vector<double> x, y;  // isotonic knots
    double a = 0, b = 0;       // platt
    // logistic: per feature the training mean and std (0: dropped) and the weight on the standardised value
    std::vector<std::string> features;
    std::vector<double> mean, sd, w;
    double bias = 0, ridge = 0;
    int n = 0, n_correct = 0;  // training run
    double train_auroc = 0;
    std::string source;  // where the training labels came from
    std::string part;    // which questions of it trained: "dev", "test", "all"; empty: not recorded
    CalibrationModel model;
    std::string path;  // where it was loaded from (not stored): errors name it

    // Probability of correct for a raw score (NaN -> NaN). Single-score methods only; logistic: Error.
    double apply(double raw) const;
    // Probability of correct for one answer's scores: the calibrated score, or the logistic combination of
    // the features. A score it needs that is absent -> Error naming it (a file fitted on other score names
    // must not silently give nothing); a NaN value -> NaN.
    double apply(const std::map<std::string, double>& scores) const;
};

// labels: 1 correct, 0 not. Throws Error on size mismatch, fewer than 2 samples, a non-finite score, or a
// single class (nothing to calibrate against).
Calibration fit_isotonic(const std::vector<double>& scores, const std::vector<int>& labels);
Calibration fit_platt(const std::vector<double>& scores, const std::vector<int>& labels);
// Isotonic or Platt (logistic needs named features: fit_logistic).
Calibration fit_calibration(CalibrationMethod m, const std::vector<double>& scores,
                            const std::vector<int>& labels);
// rows[i][j]: feature j of sample i. Throws Error naming the feature or sample as above, and on an empty or
// repeated feature name or a ridge <= 0. score: "combined" or "combined:<name>".
Calibration fit_logistic(const std::vector<std::string>& features,
                         const std::vector<std::vector<double>>& rows, const std::vector<int>& labels,
                         double ridge = 1.0, const std::string& score = "combined");

std::string calibration_to_json(const Calibration& c);
// Throws Error naming `origin` and the problem (not JSON, wrong format or version, missing field, knots
// not sorted or not monotone in the stated direction, probabilities outside [0, 1]).
Calibration calibration_from_json(const std::string& text, const std::string& origin);
void save_calibration(const Calibration& c, const std::string& path);
Calibration load_calibration(const std::string& path);

// <model path without .gguf>.calibration.<score>.json
std::string default_calibration_path(const std::string& model_path, const std::string& score);

// Scores + calibrations -> "p_correct.<score>": for a single-score calibration whose score is present (an
// absent one adds nothing, as before), and for every logistic one (an absent feature throws Error, see
// Calibration::apply). What generate, sample and the server add to a response's scores.
std::map<std::string, double> calibrated_scores(const std::map<std::string, double>& scores,
                                                const std::vector<Calibration>& cals);

// The loaded model's identity: file name and size of `path` (stat), and the given metadata.
CalibrationModel calibration_model_of(const std::string& path, const std::string& name,
                                      const std::string& arch, int n_layer);
// The model of the run in `run_dir` from its run.json (eval coe / eval sample / router: identity.model and
// model_info); the file size if that model file is still there. No run.json: an empty record. A run.json
// that is not JSON: Error naming it.
CalibrationModel read_run_model(const std::string& run_dir);
// Throws Error ("calibration file '<path>': fitted for model A, not for the loaded B") when a field that
// both record differs: file size, general.name, architecture, layer count. The file name alone may differ (a
// renamed copy is the same model). A calibration without a model record passes.
void check_calibration_model(const Calibration& c, const CalibrationModel& loaded);

// (score, label) pairs from a labelled JSONL run: lines with "scores" and "correct" (eval coe), or lines with
// a "samples" array of such objects (eval sample). Throws Error naming the file and line when the score is
// missing or a line is malformed.
void read_labelled_scores(const std::string& path, const std::string& score, std::vector<double>& scores,
                          std::vector<int>& labels);

// Several scores per labelled answer, for fit_logistic. keep(id) decides per line by its "id" (questions of
// a development part); without keep every line is read, with it a line without "id" is an Error. A missing
// feature is an Error naming it and the line; an answer with a null (non-finite) feature is skipped and
// counted in n_skipped.
struct LabelledRows {
    std::vector<std::vector<double>> rows;
    std::vector<int> labels;
    int n_lines = 0, n_kept_lines = 0, n_skipped = 0;
};
LabelledRows read_labelled_rows(const std::string& path, const std::vector<std::string>& features,
                                const std::function<bool(const std::string& id)>& keep = nullptr);

}  // namespace kvlens
