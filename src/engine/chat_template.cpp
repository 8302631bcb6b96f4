#include "engine/chat_template.h"

#include <cstddef>

#include "util/error.h"

namespace kvlens {

namespace {

// DeepSeek's markers use U+FF5C (full-width vertical bar) and U+2581 (lower one-eighth block), in UTF-8.
constexpr const char* kDsUser = "<｜User｜>";
constexpr const char* kDsAssistant = "<｜Assistant｜>";
constexpr const char* kDsEos = "<｜end▁of▁sentence｜>";

constexpr const char* kQwen25DefaultSystem =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

constexpr const char* kThinkOpen = "<think>\n";
constexpr const char* kThinkClose = "\n</think>\n\n";
constexpr const char* kThinkEmpty = "<think>\n\n</think>\n\n";

struct NamedTemplate {
    const char* name;
    ChatTemplate t;
};
constexpr NamedTemplate kTemplates[] = {
    {"auto", ChatTemplate::Auto},
    {"chatml", ChatTemplate::ChatML},
    {"qwen2", ChatTemplate::Qwen2},
    {"qwen3", ChatTemplate::Qwen3},
    {"deepseek-r1", ChatTemplate::DeepSeekR1},
    {"llama3", ChatTemplate::Llama3},
};

bool contains(const std::string& s, const char* needle) {
    return s.find(needle) != std::string::npos;
}

bool starts_with(const std::string& s, const std::string& p) {
    return s.compare(0, p.size(), p) == 0;
}

bool ends_with(const std::string& s, const std::string& p) {
    return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// Jinja's lstrip/rstrip/strip with a character set, as Qwen3's template uses them with '\n'.
std::string lstrip(const std::string& s, const char* chars) {
    const size_t b = s.find_first_not_of(chars);
    return b == std::string::npos ? std::string() : s.substr(b);
}

std::string rstrip(const std::string& s, const char* chars) {
    const size_t e = s.find_last_not_of(chars);
    return e == std::string::npos ? std::string() : s.substr(0, e + 1);
}

std::string strip(const std::string& s, const char* chars) {
    return lstrip(rstrip(s, chars), chars);
}

// Jinja's |trim (Python str.strip()) for ASCII whitespace, as Llama 3's template and llama.cpp apply it.
std::string trim_ws(const std::string& s) {
    return strip(s, " \t\n\r\f\v");
}

// Python s.split(sep)[-1] and s.split(sep)[0].
std::string after_last(const std::string& s, const std::string& sep) {
    const size_t p = s.rfind(sep);
    return p == std::string::npos ? s : s.substr(p + sep.size());
}

std::string before_first(const std::string& s, const std::string& sep) {
    const size_t p = s.find(sep);
    return p == std::string::npos ? s : s.substr(0, p);
}

std::string template_name(ChatTemplate t) {
    return std::string("'") + to_string(t) + "'";
}

void check_roles(ChatTemplate t, const std::vector<ChatMessage>& msgs) {
    for (size_t i = 0; i < msgs.size(); ++i) {
        const std::string& r = msgs[i].role;
        if (r != "system" && r != "user" && r != "assistant") {
            throw Error("chat template " + template_name(t) + ": message " + std::to_string(i) +
                        " has role '" + r + "' (expected system, user or assistant)");
        }
    }
}

void chatml_turn(std::string& out, const std::string& role, const std::string& content) {
    out += "<|im_start|>";
    out += role;
    out += '\n';
    out += content;
    out += "<|im_end|>\n";
}

std::string render_chatml(const std::vector<ChatMessage>& msgs, bool prefix) {
    std::string out;
    for (const auto& m : msgs) chatml_turn(out, m.role, m.content);
    if (prefix) out += "<|im_start|>assistant\n";
    return out;
}

std::string render_qwen2(const std::vector<ChatMessage>& msgs, bool prefix) {
    std::string out;
    // Qwen2.5 checks only the first message; a later system message is rendered in place and the default
    // is still inserted.
    if (msgs.empty() || msgs[0].role != "system") chatml_turn(out, "system", kQwen25DefaultSystem);
    return out + render_chatml(msgs, prefix);
}

std::string render_qwen3(const std::vector<ChatMessage>& msgs, bool prefix, ThinkMode mode) {
    // The last real user query; user messages that only carry a tool response do not count (as in Qwen3's
    // template, which starts from the last message when there is none).
    size_t last_query = msgs.empty() ? 0 : msgs.size() - 1;
    for (size_t i = msgs.size(); i-- > 0;) {
        const std::string& c = msgs[i].content;
        if (msgs[i].role == "user" &&
            !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    std::string out;
    for (size_t i = 0; i < msgs.size(); ++i) {
        const ChatMessage& m = msgs[i];
        if (m.role != "assistant") {
            chatml_turn(out, m.role, m.content);
            continue;
        }
        std::string content = m.content;
        std::string reasoning;
        if (contains(m.content, "</think>")) {
            content = lstrip(after_last(m.content, "</think>"), "\n");
            reasoning =
                lstrip(after_last(rstrip(before_first(m.content, "</think>"), "\n"), "<think>"), "\n");
        }
        out += "<|im_start|>assistant\n";
        const bool last = i + 1 == msgs.size();
        if (i > last_query && (last || !reasoning.empty())) {
            out += kThinkOpen;
            out += strip(reasoning, "\n");
            out += kThinkClose;
            out += lstrip(content, "\n");
        } else {
            out += content;
        }
        out += "<|im_end|>\n";
    }
    if (prefix) {
        out += "<|im_start|>assistant\n";
        if (mode == ThinkMode::Off) out += kThinkEmpty;
    }
    return out;
}

std::string render_deepseek_r1(const std::vector<ChatMessage>& msgs, bool prefix, ThinkMode mode) {
    std::string out;
    const ChatMessage* system = nullptr;
    for (const auto& m : msgs) {
        if (m.role != "system") continue;
        if (system)
            throw Error("chat template 'deepseek-r1': more than one system message (it supports one)");
        system = &m;
    }
    if (system) out += system->content;
    for (const auto& m : msgs) {
        if (m.role == "user") {
            out += kDsUser;
            out += m.content;
        } else if (m.role == "assistant") {
            // The official template keeps what follows the last </think>, without trimming newlines.
            out += kDsAssistant;
            out += after_last(m.content, "</think>");
            out += kDsEos;
        }
    }
    if (prefix) {
        out += kDsAssistant;
        out += mode == ThinkMode::Off ? kThinkEmpty : kThinkOpen;
    }
    return out;
}

std::string render_llama3(const std::vector<ChatMessage>& msgs, bool prefix) {
    std::string out;
    for (const auto& m : msgs) {
        out += "<|start_header_id|>";
        out += m.role;
        out += "<|end_header_id|>\n\n";
        out += trim_ws(m.content);
        out += "<|eot_id|>";
    }
    if (prefix) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
}

}  // namespace

ChatTemplate parse_chat_template(const std::string& name) {
    std::string known;
    for (const auto& nt : kTemplates) {
        if (name == nt.name) return nt.t;
        known += known.empty() ? "" : ", ";
        known += nt.name;
    }
    throw Error("chat template '" + name + "': unknown (known: " + known + ")");
}

const char* to_string(ChatTemplate t) {
    for (const auto& nt : kTemplates) {
        if (nt.t == t) return nt.name;
    }
    return "?";
}

ThinkMode parse_think_mode(const std::string& s) {
    if (s == "on") return ThinkMode::On;
    if (s == "off") return ThinkMode::Off;
    if (s == "default") return ThinkMode::Default;
    throw Error("think mode '" + s + "': unknown (known: on, off, default)");
}

const char* to_string(ThinkMode m) {
    switch (m) {
        case ThinkMode::Default:
            return "default";
        case ThinkMode::On:
            return "on";
        case ThinkMode::Off:
            return "off";
    }
    return "?";
}

ChatTemplate detect_chat_template(const std::string& gguf_template, const std::string& arch) {
    const std::string& s = gguf_template;
    if (s.empty()) {
        if (arch == "qwen3" || arch == "qwen3moe") return ChatTemplate::Qwen3;
        if (arch == "qwen2" || arch == "qwen2moe") return ChatTemplate::Qwen2;
        return ChatTemplate::ChatML;
    }
    if (contains(s, kDsUser) && contains(s, kDsAssistant)) return ChatTemplate::DeepSeekR1;
    if (contains(s, "<|start_header_id|>") && contains(s, "<|end_header_id|>")) return ChatTemplate::Llama3;
    if (contains(s, "<|im_start|>")) {
        // Jinja source text, so the newlines are the two characters '\' 'n'. Qwen3.5 also has the empty block
        // but opens <think> itself in the generation prompt, which our Qwen3 prefix does not do.
        if (contains(s, R"('<think>\n\n</think>\n\n')") && !contains(s, R"({{- '<think>\n' }})")) {
            return ChatTemplate::Qwen3;
        }
        if (contains(s, kQwen25DefaultSystem) || contains(s, "You are Qwen, created by Alibaba Cloud")) {
            return ChatTemplate::Qwen2;
        }
        return ChatTemplate::ChatML;
    }
    throw Error("GGUF chat template (architecture '" + arch +
                "'): not a supported family; choose one of chatml, qwen2, qwen3, deepseek-r1, llama3");
}

std::string render_chat(ChatTemplate t, const std::vector<ChatMessage>& msgs, bool add_assistant_prefix,
                        ThinkMode mode) {
    if (t == ChatTemplate::Auto) {
        throw Error("chat template 'auto': resolve it with detect_chat_template before rendering");
    }
    if (mode == ThinkMode::On && !has_thinking(t)) {
        throw Error("chat template " + template_name(t) + ": has no thinking mode (think mode 'on')");
    }
    check_roles(t, msgs);
    switch (t) {
        case ChatTemplate::ChatML:
            return render_chatml(msgs, add_assistant_prefix);
        case ChatTemplate::Qwen2:
            return render_qwen2(msgs, add_assistant_prefix);
        case ChatTemplate::Qwen3:
            return render_qwen3(msgs, add_assistant_prefix, mode);
        case ChatTemplate::DeepSeekR1:
            return render_deepseek_r1(msgs, add_assistant_prefix, mode);
        case ChatTemplate::Llama3:
            return render_llama3(msgs, add_assistant_prefix);
        case ChatTemplate::Auto:
            break;
    }
    throw Error("chat template " + template_name(t) + ": cannot render");
}

bool has_thinking(ChatTemplate t) {
    return t == ChatTemplate::Qwen3 || t == ChatTemplate::DeepSeekR1;
}

std::string think_open_text(ChatTemplate t) {
    if (!has_thinking(t)) throw Error("chat template " + template_name(t) + ": has no thinking mode");
    return kThinkOpen;
}

std::string think_close_text(ChatTemplate t) {
    if (!has_thinking(t)) throw Error("chat template " + template_name(t) + ": has no thinking mode");
    return kThinkClose;
}

std::string think_mode_suffix(ChatTemplate t, ThinkMode mode) {
    if (!has_thinking(t)) throw Error("chat template " + template_name(t) + ": has no thinking mode");
    if (mode == ThinkMode::Off) return kThinkEmpty;
    // Qwen3's template leaves <think> to the model; DeepSeek-R1's opens it in the prompt.
    return t == ChatTemplate::DeepSeekR1 ? kThinkOpen : "";
}

std::string render_chat_undecided(ChatTemplate t, const std::vector<ChatMessage>& msgs) {
    const std::string off = render_chat(t, msgs, true, ThinkMode::Off);
    const std::string suffix = think_mode_suffix(t, ThinkMode::Off);
    if (!ends_with(off, suffix))
        throw Error("chat template " + template_name(t) + ": no think block to remove");
    return off.substr(0, off.size() - suffix.size());
}

std::vector<std::string> end_of_turn_texts(ChatTemplate t) {
    switch (t) {
        case ChatTemplate::ChatML:
            return {"<|im_end|>"};
        case ChatTemplate::Qwen2:
        case ChatTemplate::Qwen3:
            return {"<|im_end|>", "<|endoftext|>"};
        case ChatTemplate::DeepSeekR1:
            return {kDsEos};
        case ChatTemplate::Llama3:
            return {"<|eot_id|>", "<|end_of_text|>"};
        case ChatTemplate::Auto:
            break;
    }
    throw Error("chat template " + template_name(t) + ": resolve it with detect_chat_template first");
}

}  // namespace kvlens
