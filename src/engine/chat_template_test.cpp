#include "engine/chat_template.h"

#include <gtest/gtest.h>
#include <llama.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "util/error.h"

namespace kvlens {
namespace {

using Msgs = std::vector<ChatMessage>;

// The DeepSeek markers spelled as bytes, independent of the source file's encoding: U+FF5C is EF BD 9C and
// U+2581 is E2 96 81.
const std::string kUser = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>";
const std::string kAssistant =
    "<\xEF\xBD\x9C"
    "Assistant\xEF\xBD\x9C>";
const std::string kEos =
    "<\xEF\xBD\x9C"
    "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";

const Msgs kOneUser = {{"user", "Hi"}};

// system, user, assistant, user: the multi-turn case used throughout.
const Msgs kMulti = {
    {"system", "Be brief."},
    {"user", "2+2?"},
    {"assistant", "4"},
    {"user", "3+3?"},
};

// Expects fn() to throw kvlens::Error whose message contains every one of needles.
template <typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& needles) {
    try {
        fn();
        ADD_FAILURE() << "no kvlens::Error thrown";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
        for (const auto& n : needles)
            EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    }
}

// ---- names ----

TEST(ChatTemplateNames, RoundTrip) {
    for (auto t : {ChatTemplate::Auto, ChatTemplate::ChatML, ChatTemplate::Qwen2, ChatTemplate::Qwen3,
                   ChatTemplate::DeepSeekR1, ChatTemplate::Llama3}) {
        EXPECT_EQ(parse_chat_template(to_string(t)), t) << to_string(t);
    }
    EXPECT_STREQ(to_string(ChatTemplate::DeepSeekR1), "deepseek-r1");
    EXPECT_EQ(parse_chat_template("chatml"), ChatTemplate::ChatML);
    EXPECT_EQ(parse_think_mode("on"), ThinkMode::On);
    EXPECT_EQ(parse_think_mode("off"), ThinkMode::Off);
    EXPECT_EQ(parse_think_mode("default"), ThinkMode::Default);
    EXPECT_STREQ(to_string(ThinkMode::Off), "off");
}

TEST(ChatTemplateNames, UnknownNamesAreErrors) {
    expect_error([] { parse_chat_template("mistral"); },
                 {"'mistral'", "auto", "chatml", "qwen2", "qwen3", "deepseek-r1", "llama3"});
    expect_error([] { parse_chat_template("ChatML"); }, {"'ChatML'"});
    expect_error([] { parse_chat_template(""); }, {"''"});
    expect_error([] { parse_think_mode("auto"); }, {"'auto'", "on", "off", "default"});
}

// ---- rendering, exact strings ----

TEST(ChatTemplateRender, ChatML) {
    EXPECT_EQ(render_chat(ChatTemplate::ChatML, kOneUser, true, ThinkMode::Default),
              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(render_chat(ChatTemplate::ChatML, kMulti, false, ThinkMode::Off),
              "<|im_start|>system\nBe brief.<|im_end|>\n"
              "<|im_start|>user\n2+2?<|im_end|>\n"
              "<|im_start|>assistant\n4<|im_end|>\n"
              "<|im_start|>user\n3+3?<|im_end|>\n");
    // Generic ChatML: no SmolLM default system message, content untouched.
    EXPECT_EQ(render_chat(ChatTemplate::ChatML, {{"user", " x \n"}}, false, ThinkMode::Default),
              "<|im_start|>user\n x \n<|im_end|>\n");
    EXPECT_EQ(render_chat(ChatTemplate::ChatML, {}, true, ThinkMode::Default), "<|im_start|>assistant\n");
}

TEST(ChatTemplateRender, Qwen2InsertsQwen25DefaultSystem) {
    EXPECT_EQ(
        render_chat(ChatTemplate::Qwen2, kOneUser, true, ThinkMode::Default),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(render_chat(ChatTemplate::Qwen2, kMulti, true, ThinkMode::Off),
              "<|im_start|>system\nBe brief.<|im_end|>\n"
              "<|im_start|>user\n2+2?<|im_end|>\n"
              "<|im_start|>assistant\n4<|im_end|>\n"
              "<|im_start|>user\n3+3?<|im_end|>\n"
              "<|im_start|>assistant\n");
    // Only the first message counts, as in Qwen2.5's template.
    EXPECT_EQ(
        render_chat(ChatTemplate::Qwen2, {{"user", "a"}, {"system", "s"}}, false, ThinkMode::Default),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\na<|im_end|>\n<|im_start|>system\ns<|im_end|>\n");
}

TEST(ChatTemplateRender, Qwen3Prefixes) {
    const std::string body = "<|im_start|>user\nHi<|im_end|>\n";
    EXPECT_EQ(render_chat(ChatTemplate::Qwen3, kOneUser, true, ThinkMode::Default),
              body + "<|im_start|>assistant\n");
    EXPECT_EQ(render_chat(ChatTemplate::Qwen3, kOneUser, true, ThinkMode::On),
              body + "<|im_start|>assistant\n");
    EXPECT_EQ(render_chat(ChatTemplate::Qwen3, kOneUser, true, ThinkMode::Off),
              body + "<|im_start|>assistant\n<think>\n\n</think>\n\n");
    EXPECT_EQ(render_chat(ChatTemplate::Qwen3, kOneUser, false, ThinkMode::Off), body);
}

TEST(ChatTemplateRender, Qwen3MultiTurnStripsThinkingFromHistory) {
    const Msgs msgs = {
        {"system", "Be brief."},
        {"user", "2+2?"},
        {"assistant", "<think>\nTwo and two.\n</think>\n\n4"},
        {"user", "3+3?"},
        {"assistant", "<think>\n\n</think>\n\n6"},
        {"user", "4+4?"},
    };
    EXPECT_EQ(render_chat(ChatTemplate::Qwen3, msgs, true, ThinkMode::Off),
              "<|im_start|>system\nBe brief.<|im_end|>\n"
              "<|im_start|>user\n2+2?<|im_end|>\n"
              "<|im_start|>assistant\n4<|im_end|>\n"
              "<|im_start|>user\n3+3?<|im_end|>\n"
              "<|im_start|>assistant\n6<|im_end|>\n"
              "<|im_start|>user\n4+4?<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\n");
    // Without any </think>, history passes unchanged (no default system either).
    EXPECT_EQ(render_chat(ChatTemplate::Qwen3, kMulti, true, ThinkMode::Default),
              render_chat(ChatTemplate::ChatML, kMulti, true, ThinkMode::Default));
}

TEST(ChatTemplateRender, Qwen3KeepsThinkingAfterLastQuery) {
    // A prefilled answer after the last user message keeps its reasoning, normalised as Qwen3 does.
    const Msgs msgs = {{"user", "Q"}, {"assistant", "<think>\n\nsteps\n\n</think>\n\n\nA"}};
    EXPECT_EQ(
        render_chat(ChatTemplate::Qwen3, msgs, false, ThinkMode::Default),
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nsteps\n</think>\n\nA<|im_end|>\n");
    // As the last message it gets an (empty) think block even without one.
    EXPECT_EQ(
        render_chat(ChatTemplate::Qwen3, {{"user", "Q"}, {"assistant", "A"}}, false, ThinkMode::Default),
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n");
}

TEST(ChatTemplateRender, DeepSeekR1) {
    EXPECT_EQ(render_chat(ChatTemplate::DeepSeekR1, kOneUser, true, ThinkMode::Default),
              kUser + "Hi" + kAssistant + "<think>\n");
    EXPECT_EQ(render_chat(ChatTemplate::DeepSeekR1, kOneUser, true, ThinkMode::On),
              kUser + "Hi" + kAssistant + "<think>\n");
    EXPECT_EQ(render_chat(ChatTemplate::DeepSeekR1, kOneUser, true, ThinkMode::Off),
              kUser + "Hi" + kAssistant + "<think>\n\n</think>\n\n");
    EXPECT_EQ(render_chat(ChatTemplate::DeepSeekR1, kOneUser, false, ThinkMode::Off), kUser + "Hi");
    // System first without a separator; history keeps only what follows </think>.
    const Msgs msgs = {
        {"system", "Be brief."},
        {"user", "2+2?"},
        {"assistant", "<think>\nTwo and two.\n</think>\n\n4"},
        {"user", "3+3?"},
    };
    EXPECT_EQ(render_chat(ChatTemplate::DeepSeekR1, msgs, true, ThinkMode::Default),
              "Be brief." + kUser + "2+2?" + kAssistant + "\n\n4" + kEos + kUser + "3+3?" + kAssistant +
                  "<think>\n");
}

TEST(ChatTemplateRender, DeepSeekR1SystemRules) {
    // Moved to the front, as the official template does.
    EXPECT_EQ(
        render_chat(ChatTemplate::DeepSeekR1, {{"user", "u"}, {"system", "s"}}, false, ThinkMode::Default),
        "s" + kUser + "u");
    expect_error(
        [] {
            render_chat(ChatTemplate::DeepSeekR1, {{"system", "a"}, {"user", "u"}, {"system", "b"}}, true,
                        ThinkMode::Default);
        },
        {"'deepseek-r1'", "system"});
}

TEST(ChatTemplateRender, Llama3) {
    EXPECT_EQ(render_chat(ChatTemplate::Llama3, kOneUser, true, ThinkMode::Default),
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
    EXPECT_EQ(render_chat(ChatTemplate::Llama3, kMulti, true, ThinkMode::Off),
              "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n3+3?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
    // Content is trimmed, as Llama 3's template (|trim) does.
    EXPECT_EQ(render_chat(ChatTemplate::Llama3, {{"user", " \n a b\t\n"}}, false, ThinkMode::Default),
              "<|start_header_id|>user<|end_header_id|>\n\na b<|eot_id|>");
}

TEST(ChatTemplateRender, NoBosTextInAnyFamily) {
    for (auto t : {ChatTemplate::ChatML, ChatTemplate::Qwen2, ChatTemplate::Qwen3, ChatTemplate::DeepSeekR1,
                   ChatTemplate::Llama3}) {
        const std::string s = render_chat(t, kMulti, true, ThinkMode::Default);
        EXPECT_EQ(s.find("<|begin_of_text|>"), std::string::npos) << to_string(t);
        EXPECT_EQ(s.find("begin\xE2\x96\x81of\xE2\x96\x81sentence"), std::string::npos) << to_string(t);
    }
}

TEST(ChatTemplateRender, ThinkingOnIsAnErrorWithoutThinking) {
    for (auto t : {ChatTemplate::ChatML, ChatTemplate::Qwen2, ChatTemplate::Llama3}) {
        expect_error([t] { render_chat(t, kOneUser, true, ThinkMode::On); }, {to_string(t), "thinking"});
        EXPECT_EQ(render_chat(t, kOneUser, true, ThinkMode::Off),
                  render_chat(t, kOneUser, true, ThinkMode::Default));
    }
}

TEST(ChatTemplateRender, BadInputs) {
    expect_error([] { render_chat(ChatTemplate::Auto, kOneUser, true, ThinkMode::Default); }, {"'auto'"});
    expect_error(
        [] {
            render_chat(ChatTemplate::Qwen3, {{"user", "a"}, {"tool", "b"}}, true, ThinkMode::Default);
        },
        {"'qwen3'", "message 1", "'tool'"});
}

// ---- thinking texts and stop markers ----

TEST(ChatTemplateThinking, OpenCloseTexts) {
    for (auto t : {ChatTemplate::Qwen3, ChatTemplate::DeepSeekR1}) {
        EXPECT_TRUE(has_thinking(t));
        EXPECT_EQ(think_open_text(t), "<think>\n");
        EXPECT_EQ(think_close_text(t), "\n</think>\n\n");
    }
    for (auto t : {ChatTemplate::Auto, ChatTemplate::ChatML, ChatTemplate::Qwen2, ChatTemplate::Llama3}) {
        EXPECT_FALSE(has_thinking(t));
        expect_error([t] { think_open_text(t); }, {to_string(t)});
        expect_error([t] { think_close_text(t); }, {to_string(t)});
    }
    // Switching mid-answer from an open think block gives the same text as a fast-mode answer after it.
    EXPECT_EQ(render_chat(ChatTemplate::Qwen3, kOneUser, true, ThinkMode::On) +
                  think_open_text(ChatTemplate::Qwen3) + think_close_text(ChatTemplate::Qwen3),
              render_chat(ChatTemplate::Qwen3, kOneUser, true, ThinkMode::Off));
}

TEST(ChatTemplateThinking, UndecidedPlusSuffixIsEachMode) {
    const std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", "What is 2+2?"}};
    for (ChatTemplate t : {ChatTemplate::Qwen3, ChatTemplate::DeepSeekR1}) {
        const std::string undecided = render_chat_undecided(t, msgs);
        EXPECT_EQ(undecided.find("<think>"), std::string::npos) << to_string(t);
        for (ThinkMode m : {ThinkMode::On, ThinkMode::Off})
            EXPECT_EQ(undecided + think_mode_suffix(t, m), render_chat(t, msgs, true, m)) << to_string(t);
    }
    EXPECT_EQ(think_mode_suffix(ChatTemplate::Qwen3, ThinkMode::On), "");
    EXPECT_EQ(think_mode_suffix(ChatTemplate::DeepSeekR1, ThinkMode::On), "<think>\n");
    EXPECT_THROW(render_chat_undecided(ChatTemplate::ChatML, msgs), Error);
    EXPECT_THROW(think_mode_suffix(ChatTemplate::Llama3, ThinkMode::Off), Error);
}

TEST(ChatTemplateThinking, EndOfTurnTexts) {
    EXPECT_EQ(end_of_turn_texts(ChatTemplate::ChatML), std::vector<std::string>{"<|im_end|>"});
    EXPECT_EQ(end_of_turn_texts(ChatTemplate::Qwen3).at(0), "<|im_end|>");
    EXPECT_EQ(end_of_turn_texts(ChatTemplate::Qwen2).at(0), "<|im_end|>");
    EXPECT_EQ(end_of_turn_texts(ChatTemplate::DeepSeekR1), std::vector<std::string>{kEos});
    EXPECT_EQ(end_of_turn_texts(ChatTemplate::Llama3).at(0), "<|eot_id|>");
    expect_error([] { end_of_turn_texts(ChatTemplate::Auto); }, {"'auto'"});
    // The first marker is the one the template writes after each turn.
    for (auto t : {ChatTemplate::ChatML, ChatTemplate::Qwen2, ChatTemplate::Qwen3, ChatTemplate::DeepSeekR1,
                   ChatTemplate::Llama3}) {
        const std::string s = render_chat(t, {{"user", "u"}, {"assistant", "a"}}, false, ThinkMode::Default);
        const std::string eot = end_of_turn_texts(t).at(0);
        EXPECT_NE(s.find("a" + eot), std::string::npos) << to_string(t) << ": " << s;
    }
}

// ---- detection on the real templates ----

// SmolLM2-135M-Instruct's tokenizer.chat_template, as stored in its GGUF (not among llama.cpp's copies).
const char* kSmolLM2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const std::string kTemplatesDir = KVLENS_LLAMA_TEMPLATES_DIR;

// Reads models/templates/<name>; empty when the directory is absent (the caller skips then).
std::string read_template(const std::string& name) {
    std::ifstream f(kTemplatesDir + "/" + name, std::ios::binary);
    if (!f) {
        ADD_FAILURE() << "cannot read " << kTemplatesDir << "/" << name;
        return "";
    }
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

bool templates_dir_missing() {
    return kTemplatesDir.empty() || !std::ifstream(kTemplatesDir + "/Qwen-Qwen3-0.6B.jinja").good();
}

struct RealTemplate {
    const char* file;
    const char* arch;
    ChatTemplate expected;
};

const RealTemplate kReal[] = {
    {"Qwen-Qwen3-0.6B.jinja", "qwen3", ChatTemplate::Qwen3},
    {"Qwen-Qwen2.5-7B-Instruct.jinja", "qwen2", ChatTemplate::Qwen2},
    {"deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "qwen2", ChatTemplate::DeepSeekR1},
    {"deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "llama", ChatTemplate::DeepSeekR1},
    {"llama-cpp-deepseek-r1.jinja", "qwen2", ChatTemplate::DeepSeekR1},
    {"meta-llama-Llama-3.1-8B-Instruct.jinja", "llama", ChatTemplate::Llama3},
    {"meta-llama-Llama-3.2-3B-Instruct.jinja", "llama", ChatTemplate::Llama3},
    {"meta-llama-Llama-3.3-70B-Instruct.jinja", "llama", ChatTemplate::Llama3},
    {"NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", "llama", ChatTemplate::ChatML},
    // ChatML templates with their own thinking conventions: not Qwen3 (Qwen3.5 forces "<think>\n").
    {"Qwen3.5-4B.jinja", "qwen35", ChatTemplate::ChatML},
    {"Qwen-QwQ-32B.jinja", "qwen2", ChatTemplate::ChatML},
    {"HuggingFaceTB-SmolLM3-3B.jinja", "smollm3", ChatTemplate::ChatML},
};

TEST(ChatTemplateDetect, RealTemplates) {
    if (templates_dir_missing())
        GTEST_SKIP() << "llama.cpp models/templates not found at '" << kTemplatesDir << "'";
    for (const auto& r : kReal) {
        const std::string text = read_template(r.file);
        ASSERT_FALSE(text.empty()) << r.file;
        EXPECT_EQ(to_string(detect_chat_template(text, r.arch)), std::string(to_string(r.expected)))
            << r.file;
    }
    expect_error([] { detect_chat_template(read_template("google-gemma-2-2b-it.jinja"), "gemma2"); },
                 {"'gemma2'", "chatml"});
    expect_error(
        [] { detect_chat_template(read_template("mistralai-Mistral-Nemo-Instruct-2407.jinja"), "llama"); },
        {"'llama'"});
}

TEST(ChatTemplateDetect, SmolLM2AndEmptyTemplates) {
    EXPECT_EQ(detect_chat_template(kSmolLM2Template, "llama"), ChatTemplate::ChatML);
    EXPECT_EQ(detect_chat_template("", "qwen3"), ChatTemplate::Qwen3);
    EXPECT_EQ(detect_chat_template("", "qwen3moe"), ChatTemplate::Qwen3);
    EXPECT_EQ(detect_chat_template("", "qwen2"), ChatTemplate::Qwen2);
    EXPECT_EQ(detect_chat_template("", "llama"), ChatTemplate::ChatML);
    expect_error([] { detect_chat_template("{{ messages }}", "gpt2"); }, {"'gpt2'"});
}

// ---- independent reference: llama.cpp's built-in renderer ----

// llama_chat_apply_template with a built-in name or a template text (llama.cpp then detects the family).
std::string llama_render(const std::string& tmpl, const Msgs& msgs, bool add_ass) {
    std::vector<llama_chat_message> chat;
    for (const auto& m : msgs) chat.push_back({m.role.c_str(), m.content.c_str()});
    std::vector<char> buf(256);
    int32_t n = llama_chat_apply_template(tmpl.c_str(), chat.data(), chat.size(), add_ass, buf.data(),
                                          static_cast<int32_t>(buf.size()));
    if (n > static_cast<int32_t>(buf.size())) {
        buf.resize(static_cast<size_t>(n));
        n = llama_chat_apply_template(tmpl.c_str(), chat.data(), chat.size(), add_ass, buf.data(), n);
    }
    if (n < 0) {
        ADD_FAILURE() << "llama_chat_apply_template failed for '" << tmpl.substr(0, 40) << "'";
        return "";
    }
    return std::string(buf.data(), static_cast<size_t>(n));
}

// No system message and no think tags: the part every renderer should agree on.
const Msgs kPlain = {{"user", "2+2?"}, {"assistant", "4"}, {"user", "3+3?"}};

TEST(ChatTemplateReference, ChatMLQwenAgreeWithLlamaCpp) {
    for (const Msgs* msgs : {&kPlain, &kMulti}) {
        for (bool pre : {false, true}) {
            const std::string ref = llama_render("chatml", *msgs, pre);
            EXPECT_EQ(render_chat(ChatTemplate::ChatML, *msgs, pre, ThinkMode::Default), ref);
            EXPECT_EQ(render_chat(ChatTemplate::Qwen3, *msgs, pre, ThinkMode::Default), ref);
        }
    }
    // Qwen2 = llama.cpp's chatml after Qwen2.5's default system message (llama.cpp adds none).
    Msgs with_default = {{"system", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}};
    with_default.insert(with_default.end(), kPlain.begin(), kPlain.end());
    EXPECT_EQ(render_chat(ChatTemplate::Qwen2, kPlain, true, ThinkMode::Default),
              llama_render("chatml", with_default, true));
}

TEST(ChatTemplateReference, Llama3AgreesWithLlamaCpp) {
    const Msgs padded = {
        {"system", " sys \n"}, {"user", "\n2+2? "}, {"assistant", " 4\n\n"}, {"user", "3+3?"}};
    for (const Msgs* msgs : {&kPlain, &kMulti, &padded}) {
        for (bool pre : {false, true}) {
            EXPECT_EQ(render_chat(ChatTemplate::Llama3, *msgs, pre, ThinkMode::Default),
                      llama_render("llama3", *msgs, pre));
        }
    }
}

TEST(ChatTemplateReference, DeepSeekR1AgreesWithLlamaCppDeepseek3) {
    // llama.cpp's "deepseek3" is the DeepSeek-V3/R1 layout without the thinking prefix.
    EXPECT_EQ(render_chat(ChatTemplate::DeepSeekR1, kPlain, false, ThinkMode::Default),
              llama_render("deepseek3", kPlain, false));
    EXPECT_EQ(render_chat(ChatTemplate::DeepSeekR1, kPlain, true, ThinkMode::Default),
              llama_render("deepseek3", kPlain, true) + "<think>\n");
    // Known difference: llama.cpp writes "\n\n" after the system message; R1-Distill's template does not.
    const std::string ours = render_chat(ChatTemplate::DeepSeekR1, kMulti, true, ThinkMode::Default);
    const std::string ref = llama_render("deepseek3", kMulti, true);
    EXPECT_EQ(ref.substr(0, 11), "Be brief.\n\n");
    EXPECT_EQ("Be brief." + ref.substr(11) + "<think>\n", ours);
}

TEST(ChatTemplateReference, LlamaCppDetectsTheSameFamilies) {
    if (templates_dir_missing())
        GTEST_SKIP() << "llama.cpp models/templates not found at '" << kTemplatesDir << "'";
    // Given the real template text, llama.cpp picks its own built-in; on plain messages it must match ours
    // (minus the parts documented as differences: Qwen2.5's default system, R1's "<think>\n" prefix).
    for (const auto& r : kReal) {
        const std::string text = read_template(r.file);
        const ChatTemplate t = detect_chat_template(text, r.arch);
        std::string ours = render_chat(t, kPlain, true, ThinkMode::Default);
        if (t == ChatTemplate::Qwen2)
            ours = render_chat(ChatTemplate::ChatML, kPlain, true, ThinkMode::Default);
        if (t == ChatTemplate::DeepSeekR1)
            ours = ours.substr(0, ours.size() - std::string("<think>\n").size());
        EXPECT_EQ(ours, llama_render(text, kPlain, true)) << r.file;
    }
}

}  // namespace
}  // namespace kvlens
