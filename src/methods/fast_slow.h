// Fast/slow thinking (method.md 3), online: route on the prompt's KV features, then switch mode at most once
// while decoding when the windowed prediction says so. One sequence; the cache prefix is never recomputed.
//
//   prompt (no think tag) -> predict d -> fast: append the empty think block | slow: as the template opens it
//   every `check_every` generated tokens: predict on the last seq_len KV rows of the sequence
//     slow and d < 30 (inside the think block): append "\n</think>\n\n" and answer
//     fast and d > 70: drop the fast tokens (seq_rm back to the prompt end) and think instead
//
// Every token the model samples is counted, before and after a switch, including fast tokens dropped by
// a fast -> slow switch; appended switch tokens are counted separately.
//
// The training-free peers (issue #13), slow start without a router: a thinking budget (Qwen3's: after N
// think tokens append the close and answer) and a DEER-style early exit (at each line break inside the think
// block, close it on a copy of the sequence and answer greedily; a trial answer whose mean token probability
// exceeds the threshold is kept: the copy becomes the sequence and decoding goes on from its end; any other
// trial is dropped). Trial tokens are counted too: decoding them is the exit's cost.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "methods/router.h"

namespace kvlens {

enum class ThinkStart { Fast, Slow, Auto };
ThinkStart parse_think_start(const std::string& s);  // "fast" | "slow" | "auto"
const char* to_string(ThinkStart s);

struct FastSlowResult;

// How a slow answer may leave its think block early, without a router.
enum class ThinkExit { None, Budget, Deer };
struct ThinkExitPolicy {
    ThinkExit kind = ThinkExit::None;
    int budget = 0;  // Budget: think tokens (>= 1) after which the close is appended
    // Deer: exit when a trial answer's mean token probability is above this (DEER's default 0.95; 0: at
    // the first line break, > 1: never), a trial taking at most trial_max_tokens.
    float threshold = 0.95f;
    int trial_max_tokens = 32;
};
// "budget:N" (N >= 1), "deer" or "deer:T" (T >= 0); throws Error naming "think". Other names give None.
ThinkExitPolicy parse_think_exit(const std::string& s);
// The policy as parse_think_exit reads it ("budget:64", "deer:0.95"); "" for None.
std::string to_string(const ThinkExitPolicy& p);

// A model without a thinking template made hybrid by its prompt (issue #13, "prompted hybrid"): the text that
// commits the assistant's turn to a mode (appended to the prompt, as a thinking template's suffix is), the
// text that ends the reasoning early (a switch, a budget, DEER's trial, the cut probe) and the marker whose
// appearance ends it (the model's own "</think>"). E.g. fast "The final answer is $\boxed{", slow "", close
// "\n\nSo the final answer is $\boxed{", marker "\boxed{". A slow answer reasons until the marker
// appears; the answer is the whole text (the matcher finds it), not what follows a think block.
struct PromptedHybrid {
    std::string fast, slow, close, marker;
    bool active() const { return !close.empty(); }
};
// Throws Error naming `what` unless close and marker are non-empty, close contains the marker and slow
// does not (a slow answer must start inside its reasoning and the close must end it).
void check_prompted_hybrid(const PromptedHybrid& h, const std::string& what);

struct FastSlowParams {
    ThinkStart start = ThinkStart::Auto;
    // Active: the modes come from these texts, not from the chat template's think block (which the template
    // then need not have).
    PromptedHybrid prompted;
    bool allow_switch = true;  // online switching (needs a classifier)
    RoutePolicy policy;
    int max_tokens = 512;  // sampled tokens, all modes together
    SamplingParams sampling;
    // Labelling along the answer (`router label --windows`): every trace_every sampled tokens (0: never)
    // record the window's features, at the positions where switching checks them; inside an open think
    // block also close it on a copy of the sequence (seq + 1, so the session needs two sequences) and let
    // the model answer greedily for up to cut_max_tokens: is the answer already settled at this point?
    int trace_every = 0;
    int cut_max_tokens = 64;
    // Start Slow without switching: leave the think block by budget or DEER (the session needs two sequences
    // for DEER's trials, seq + 1 being the copy).
    ThinkExitPolicy exit;
    // Called after each sampled token (the end-of-turn excepted) and after a switch, with the result so far
    // (its tokens; text fields are filled at the end) and whether those tokens are final: false while a fast
    // answer may still be dropped by a fast -> slow switch. Return false to stop (StopReason::Callback).
    std::function<bool(const FastSlowResult& so_far, bool tokens_final)> on_token;
};

// One recorded window along an answer.
struct TraceWindow {
    int at = 0;  // sampled tokens so far
    ThinkChoice mode = ThinkChoice::Slow;
    bool in_think = false;        // inside an open think block (where slow -> fast can act)
    std::vector<float> features;  // the router features of the last seq_len rows
    // The cut probe (only when in_think): the text after the appended close, greedy.
    bool cut = false;
    std::string cut_answer;
    int cut_tokens = 0;  // sampled after the close, end-of-turn included
    StopReason cut_stop = StopReason::MaxTokens;
};

struct FastSlowResult {
    std::vector<llama_token> prompt;  // the undecided prompt (fast_slow_prompt), tokenized
    std::vector<llama_token> tokens;  // what follows it in the final sequence: mode text, answer, switch text
    std::string text;                 // tokens detokenized, end-of-turn excluded
    std::string answer;  // the text after the last "</think>" (all of text if none; all of it when prompted)
    ThinkChoice initial = ThinkChoice::Slow, final = ThinkChoice::Slow;
    float prompt_score = NAN;            // router prediction on the prompt (NaN without a classifier)
    std::vector<float> prompt_features;  // the router features of the prompt (always computed)
    int switch_at = -1;                  // sampled tokens before the switch, -1 if none
    int n_sampled = 0;                   // tokens sampled from the model, all of them
    int n_switch_tokens = 0;             // tokens appended by the switch
    int n_dropped = 0;                   // sampled fast tokens dropped by a fast -> slow switch
    // Cost: the sampled tokens up to the close of the think block (open tag and the model's own close
    // included) and the tokens after the close (a kept trial's included); the tokens sampled in DEER's
    // trials, kept or dropped (a kept trial's close counts as switch tokens), and how many trials; every
    // decode call of the run (prompt, trials) and its wall-clock.
    int n_think = 0, n_answer = 0;
    int n_trial = 0, n_trials = 0;
    int64_t n_decode_calls = 0;
    double wall_ms = 0;
    std::string exit;  // how the think block ended: model, budget, deer, switch; "" when none was open
    std::vector<std::pair<int, float>> checks;  // (sampled tokens so far, prediction) at every check
    StopReason stop = StopReason::MaxTokens;
    std::vector<TraceWindow> trace;  // params.trace_every > 0
    // Every token the run generated: sampled, appended by a switch or an exit, and decoded in trials.
    int n_generated() const { return n_sampled + n_switch_tokens + n_trial; }
};

// The prompt before any mode text: render_chat_undecided for a thinking template, the plain generation
// prompt (render_chat with the assistant prefix) for a prompted hybrid.
std::string fast_slow_prompt(ChatTemplate tmpl, const std::vector<ChatMessage>& msgs,
                             const PromptedHybrid& prompted);

// Runs one question in sequence `seq` (which must be empty). `clf` may be null only when start is not Auto
// and allow_switch is false. `features` selects the KV window (it must be the classifier's). Throws Error
// when the prompt and max_tokens do not fit the context.
FastSlowResult run_fast_slow(Session& session, ChatTemplate tmpl, const std::vector<ChatMessage>& msgs,
                             const RouterFeatures& features, const KvClassifier* clf,
                             const FastSlowParams& params, llama_seq_id seq = 0);

}  // namespace kvlens
