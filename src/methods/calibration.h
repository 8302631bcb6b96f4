// Calibration: a monotone map from one raw score to the probability that the answer is correct, fitted on a
// labelled run (e.g. the samples.jsonl of `kvlens eval coe` or `kvlens eval sample`).
//
// The direction is fitted, not assumed: a score whose AUROC on the training run is below 0.5 (KV-CoE on
// SmolLM2, docs/results/coe-smollm2-arith) gets direction -1, i.e. the probability decreases with the raw
// score. `direction` is recorded in the file and reported.
//   isotonic  pool-adjacent-violators on the scores ordered by direction x raw; equal raw scores are pooled
//             first, so they always map to one value. Stored as knots (x ascending raw score, y probability):
//             two knots per block (its lowest and highest raw score), linear between blocks, constant beyond
//             the ends. On a training score the map returns exactly its block's accuracy.
//   platt      p = 1 / (1 + exp(-(a x + b))), maximum likelihood (Newton, on standardised x, with a tiny
//   ridge
//             so separable data stays finite). direction = sign(a).
//
// File (JSON, "format": "kvlens-calibration", "version": 1): method, score, direction, x/y (isotonic) or a/b
// (platt), n, n_correct, train_auroc, source. Default location, next to the model:
// <model path without .gguf>.calibration.<score>.json.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace kvlens {

enum class CalibrationMethod { Isotonic, Platt };
CalibrationMethod parse_calibration_method(const std::string& s);  // "isotonic" | "platt"; else Error
const char* to_string(CalibrationMethod m);

struct Calibration {
    static constexpr int kVersion = 1;
    CalibrationMethod method = CalibrationMethod::Isotonic;
    std::string score;         // the raw score's name, e.g. "hs_coe_c"
    int direction = 1;         // +1: probability increases with the raw score, -1: decreases
    std::vector<double> x, y;  // isotonic knots
    double a = 0, b = 0;       // platt
    int n = 0, n_correct = 0;  // training run
    double train_auroc = 0;
    std::string source;  // where the training labels came from

    // Probability of correct for a raw score (NaN -> NaN).
    double apply(double raw) const;
};

// labels: 1 correct, 0 not. Throws Error on size mismatch, fewer than 2 samples, a non-finite score, or a
// single class (nothing to calibrate against).
Calibration fit_isotonic(const std::vector<double>& scores, const std::vector<int>& labels);
Calibration fit_platt(const std::vector<double>& scores, const std::vector<int>& labels);
Calibration fit_calibration(CalibrationMethod m, const std::vector<double>& scores,
                            const std::vector<int>& labels);

std::string calibration_to_json(const Calibration& c);
// Throws Error naming `origin` and the problem (not JSON, wrong format or version, missing field, knots
// not sorted or not monotone in the stated direction, probabilities outside [0, 1]).
Calibration calibration_from_json(const std::string& text, const std::string& origin);
void save_calibration(const Calibration& c, const std::string& path);
Calibration load_calibration(const std::string& path);

// <model path without .gguf>.calibration.<score>.json
std::string default_calibration_path(const std::string& model_path, const std::string& score);

// Scores + calibrations -> "p_correct.<score>" for each calibration whose score is present. What generate,
// sample and the server add to a response's scores.
std::map<std::string, double> calibrated_scores(const std::map<std::string, double>& scores,
                                                const std::vector<Calibration>& cals);

// (score, label) pairs from a labelled JSONL run: lines with "scores" and "correct" (eval coe), or lines with
// a "samples" array of such objects (eval sample). Throws Error naming the file and line when the score is
// missing or a line is malformed.
void read_labelled_scores(const std::string& path, const std::string& score, std::vector<double>& scores,
                          std::vector<int>& labels);

}  // namespace kvlens
