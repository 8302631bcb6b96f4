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

struct FastSlowParams {
    ThinkStart start = ThinkStart::Auto;
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
    std::vector<llama_token> prompt;  // the undecided prompt (render_chat_undecided), tokenized
    std::vector<llama_token> tokens;  // what follows it in the final sequence: mode text, answer, switch text
    std::string text;                 // tokens detokenized, end-of-turn excluded
    std::string answer;               // the text after the last "</think>" (all of text if none)
    ThinkChoice initial = ThinkChoice::Slow, final = ThinkChoice::Slow;
    float prompt_score = NAN;                   // router prediction on the prompt (NaN without a classifier)
    std::vector<float> prompt_features;         // the router features of the prompt (always computed)
    int switch_at = -1;                         // sampled tokens before the switch, -1 if none
    int n_sampled = 0;                          // tokens sampled from the model, all of them
    int n_switch_tokens = 0;                    // tokens appended by the switch
    int n_dropped = 0;                          // sampled fast tokens dropped by a fast -> slow switch
    std::vector<std::pair<int, float>> checks;  // (sampled tokens so far, prediction) at every check
    StopReason stop = StopReason::MaxTokens;
    std::vector<TraceWindow> trace;  // params.trace_every > 0
    int n_generated() const { return n_sampled + n_switch_tokens; }
};

// Runs one question in sequence `seq` (which must be empty). `clf` may be null only when start is not Auto
// and allow_switch is false. `features` selects the KV window (it must be the classifier's). Throws Error
// when the prompt and max_tokens do not fit the context.
FastSlowResult run_fast_slow(Session& session, ChatTemplate tmpl, const std::vector<ChatMessage>& msgs,
                             const RouterFeatures& features, const KvClassifier* clf,
                             const FastSlowParams& params, llama_seq_id seq = 0);

}  // namespace kvlens
