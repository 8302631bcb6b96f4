// Chat-template rendering (engine/chat_template.h) of arbitrary messages: input = records separated by
// \x1e, each "role\x1fcontent". Every family renders them or refuses with kvlens::Error; for families with
// thinking, render_chat(on|off) == render_chat_undecided + think_mode_suffix (the router relies on it).
// The whole input is also given to detect_chat_template as a GGUF template text.
#include <cstdlib>
#include <sstream>

#include "engine/chat_template.h"
#include "fuzz_util.h"
#include "util/error.h"

using namespace kvlens;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string in = fuzz::as_string(data, size);
    std::vector<ChatMessage> msgs;
    std::stringstream ss(in);
    std::string record;
    while (std::getline(ss, record, '\x1e')) {
        std::string role, content;
        fuzz::split_once(record, "\x1f", role, content);
        msgs.push_back({role, content});
    }
    for (ChatTemplate t : {ChatTemplate::ChatML, ChatTemplate::Qwen2, ChatTemplate::Qwen3,
                           ChatTemplate::DeepSeekR1, ChatTemplate::Llama3}) {
        for (ThinkMode m : {ThinkMode::Default, ThinkMode::On, ThinkMode::Off}) {
            for (bool prefix : {true, false}) {
                try {
                    (void)render_chat(t, msgs, prefix, m);
                } catch (const Error&) {
                }
            }
        }
        if (!has_thinking(t)) continue;
        std::string undecided;
        try {
            undecided = render_chat_undecided(t, msgs);
        } catch (const Error&) {
            continue;
        }
        for (ThinkMode m : {ThinkMode::On, ThinkMode::Off})
            if (render_chat(t, msgs, true, m) != undecided + think_mode_suffix(t, m)) std::abort();
    }
    for (const char* arch : {"llama", "qwen2", "qwen3", ""}) {
        try {
            (void)detect_chat_template(in, arch);
        } catch (const Error&) {  // "not a supported family; choose one of ..."
        }
    }
    return 0;
}
