// Batch-invariant decoding (batch_invariance.h): a sequence decoded beside others gives the tokens and the
// bit-identical step statistics of the same sequence decoded alone, on a real model whose greedy choices the
// default kernels do change (the control below); and the mode refuses what would break that promise.
#include "engine/batch_invariance.h"

#include <ggml-cpu.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "engine/generate.h"
#include "util/error.h"

using namespace kvlens;

namespace {

const std::string kTiny = std::string(KVLENS_TEST_MODELS_DIR) + "/tiny-qwen3.gguf";
const std::string kTinyQ8 = std::string(KVLENS_TEST_MODELS_DIR) + "/tiny-llama-q8_0.gguf";

// Prompts of different lengths, so that sequences are prefilled together and then decode at other depths.
const char* kPrompts[] = {
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many",
    "The capital of France is",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. She earned",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her "
    "parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents.",
    "List three colours:",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
};
constexpr int kN = sizeof(kPrompts) / sizeof(kPrompts[0]);

std::vector<Generation> run(const Model& m, const std::vector<std::vector<llama_token>>& prompts,
                            bool batch_invariant) {
    SessionParams sp;
    sp.n_ctx = 2048;
    sp.n_seq_max = (int)prompts.size();
    sp.n_threads = 2;
    sp.batch_invariant = batch_invariant;
    Session s(m, sp);
    GenerateParams gp;
    gp.max_tokens = 40;
    return generate(s, prompts, gp);
}

bool same_bits(const Generation& a, const Generation& b) {
    if (a.output != b.output || a.steps.size() != b.steps.size()) return false;
    return std::memcmp(a.steps.data(), b.steps.data(), a.steps.size() * sizeof(StepStats)) == 0;
}

// How many of the prompts come out differently (tokens or any bit of the step statistics) decoded all
// together than decoded one at a time.
int changed_by_batching(const Model& m, bool batch_invariant) {
    std::vector<std::vector<llama_token>> prompts;
    for (const char* p : kPrompts) prompts.push_back(m.tokenize(p, true));
    const std::vector<Generation> together = run(m, prompts, batch_invariant);
    int changed = 0;
    for (int i = 0; i < kN; i++)
        if (!same_bits(run(m, {prompts[i]}, batch_invariant).at(0), together.at(i))) changed++;
    return changed;
}

}  // namespace

TEST(BatchInvariance, RefusesWhatWouldBreakIt) {
    set_verbose(false);
    // Matrices in F32/F16 go through llamafile's sgemm when batched (tiny-qwen3 has both).
    if (ggml_cpu_has_llamafile()) {
        try {
            Model m(ModelParams{kTiny, -1, true});
            FAIL() << "a model with F32/F16 matrices was accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("' is F"), std::string::npos) << e.what();
        }
    }
    const Model plain(ModelParams{kTinyQ8});
    SessionParams sp;
    sp.n_ctx = 64;
    sp.batch_invariant = true;
    try {
        Session s(plain, sp);
        FAIL() << "a model loaded without batch_invariant was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("loaded without it"), std::string::npos) << e.what();
    }
    const Model bi(ModelParams{kTinyQ8, -1, true});
    sp.flash_attn = FlashAttn::Off;
    try {
        Session s(bi, sp);
        FAIL() << "flash attention off was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("flash attention"), std::string::npos) << e.what();
    }
    sp.flash_attn = FlashAttn::Auto;
    Session ok(bi, sp);  // and the right combination opens
    EXPECT_GT(ok.n_ctx(), 0);
}

// SmolLM2-135M (KVLENS_SMOLLM2, the smollm2 fixture): its near-tied logits make llama.cpp's batched kernels
// change greedy tokens (bench/batch_invariance.sh); with batch_invariant nothing changes, to the bit.
TEST(BatchInvariance, ASequenceDecodesAsAloneWhateverSharesItsBatch) {
    const char* path = std::getenv("KVLENS_SMOLLM2");
    if (path == nullptr || *path == '\0') GTEST_SKIP() << "KVLENS_SMOLLM2 is not set";
    set_verbose(false);
    const Model bi(ModelParams{path, -1, true});
    EXPECT_EQ(changed_by_batching(bi, true), 0);
    // The control: the default kernels do change these sequences, so the check above can fail.
    const Model plain(ModelParams{path});
    EXPECT_GT(changed_by_batching(plain, false), 0);
}
