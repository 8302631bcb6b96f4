// Chat templates and thinking modes for the model families kvlens supports first-class.
//
// kvlens renders prompts itself instead of running the GGUF's Jinja template, because the thinking modes
// (method.md section 3) need exact control over the text up to the assistant turn, and mid-answer switching
// needs the exact open/close texts. The formats follow the official Hugging Face templates (copies in
// llama.cpp's models/templates/); every deviation is listed below.
//
// BOS rule, for every family: the rendered text contains no BOS text ("<|begin_of_text|>",
// "<｜begin▁of▁sentence｜>"). The caller tokenizes the text with add_special=true (so llama.cpp adds the
// model's BOS when the vocabulary asks for one) and parse_special=true (so the markers below become single
// special tokens).
//
// Families:
//   ChatML      "<|im_start|>{role}\n{content}<|im_end|>\n" per message; prefix "<|im_start|>assistant\n".
//               Generic: no default system message. (SmolLM2's template adds "You are a helpful AI
//               assistant named SmolLM, trained by Hugging Face" when there is no system message; we do not.)
//   Qwen2       ChatML, plus Qwen2.5's default system message "You are Qwen, created by Alibaba Cloud. You
//               are a helpful assistant." when the first message is not a system message. (Qwen2 itself used
//               "You are a helpful assistant."; we follow Qwen2.5.) Without tools this is exactly what the
//               Qwen2.5(-Coder)-Instruct templates render (checked against Jinja with their GGUFs' text).
//   Qwen3       ChatML, no default system. As Qwen3's template does, assistant turns before the last user
//               message lose their "<think>...</think>" part; an assistant turn after the last user message
//               (a prefilled answer) is rendered as "<think>\n{reasoning}\n</think>\n\n{answer}".
//               Prefix: Off -> "<|im_start|>assistant\n<think>\n\n</think>\n\n" (enable_thinking=false);
//               On/Default -> "<|im_start|>assistant\n" (the model opens <think> itself).
//   DeepSeekR1  DeepSeek-R1-Distill (Qwen and Llama): "{system}<｜User｜>{user}<｜Assistant｜>{answer}
//               <｜end▁of▁sentence｜>" (｜ is U+FF5C, ▁ is U+2581). The system message is moved to the front,
//               as the official template does; more than one system message is an error (the official
//               template silently keeps only the last). Assistant turns lose everything up to the last
//               "</think>". Prefix: On/Default -> "<｜Assistant｜><think>\n" (the official generation
//               prompt); Off -> "<｜Assistant｜><think>\n\n</think>\n\n". R1-Distill has no official off
//               mode: this is the community convention, the same empty block as Qwen3. (llama.cpp's modified
//               copy of the Qwen-32B template emits "<｜Assistant｜><think>\n</think>" when enable_thinking
//               is false.)
//   Llama3      "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>", content trimmed of
//               surrounding whitespace (as the official template and llama.cpp do); prefix
//               "<|start_header_id|>assistant<|end_header_id|>\n\n". This is the Llama 3.0 format: the 3.1+
//               templates also open with a system block holding "Cutting Knowledge Date: December 2023" and
//               "Today Date: ..."; we do not add it.
//
// Thinking modes: Default is the template's own default (Qwen3 and DeepSeekR1: thinking on). Families
// without thinking (ChatML, Qwen2, Llama3) accept Default and Off (both render plainly) and reject On.
//
// Errors are kvlens::Error with a one-line message naming the input.
#pragma once

#include <string>
#include <vector>

namespace kvlens {

enum class ChatTemplate { Auto, ChatML, Qwen2, Qwen3, DeepSeekR1, Llama3 };
enum class ThinkMode { Default, On, Off };

// role is "system", "user" or "assistant".
struct ChatMessage {
    std::string role;
    std::string content;
};

// "auto", "chatml", "qwen2", "qwen3", "deepseek-r1", "llama3". Unknown names throw, listing the known ones.
ChatTemplate parse_chat_template(const std::string& name);
const char* to_string(ChatTemplate t);

// "on", "off", "default".
ThinkMode parse_think_mode(const std::string& s);
const char* to_string(ThinkMode m);

// Picks the family from the GGUF's tokenizer.chat_template text (may be empty) and general.architecture:
//   - DeepSeek markers (<｜User｜>, <｜Assistant｜>)                          -> DeepSeekR1
//   - <|start_header_id|> and <|end_header_id|>                               -> Llama3
//   - <|im_start|> with Qwen3's empty think block for enable_thinking=false
//     and no forced "<think>\n" in the generation prompt (Qwen3.5 style)      -> Qwen3
//   - <|im_start|> with "You are Qwen, created by Alibaba Cloud"              -> Qwen2
//   - any other <|im_start|> template (SmolLM2, Hermes, QwQ, SmolLM3, ...)    -> ChatML; their own thinking
//     conventions, if any, are not modelled
//   - empty template: arch qwen3/qwen3moe -> Qwen3, qwen2/qwen2moe -> Qwen2, anything else -> ChatML (the
//     fallback llama.cpp uses too)
// Any other non-empty template throws: pass the family explicitly.
ChatTemplate detect_chat_template(const std::string& gguf_template, const std::string& arch);

// Renders msgs. With add_assistant_prefix the result ends where the assistant's answer starts, including
// the thinking-mode prefix described above. t must not be Auto.
std::string render_chat(ChatTemplate t, const std::vector<ChatMessage>& msgs, bool add_assistant_prefix,
                        ThinkMode mode);

bool has_thinking(ChatTemplate t);
// Text that opens a think block ("<think>\n") and text that closes an open one and moves to the answer
// ("\n</think>\n\n"), for switching modes mid-answer. Throw for families without thinking.
std::string think_open_text(ChatTemplate t);
std::string think_close_text(ChatTemplate t);

// The fast/slow router's view of a conversation: the generation prompt up to the assistant turn with no
// think tag yet (method.md 3: "before any think tag"), and the text that then commits it to a mode. For
// every family with thinking, render_chat(t, msgs, true, m) == render_chat_undecided(t, msgs) +
// think_mode_suffix(t, m) for m = On and Off. Throw for families without thinking.
std::string render_chat_undecided(ChatTemplate t, const std::vector<ChatMessage>& msgs);
std::string think_mode_suffix(ChatTemplate t, ThinkMode mode);

// End-of-turn markers, for stopping generation. The first is the one the template writes after each turn;
// the others also end generation for that family (e.g. the base model's end of text).
std::vector<std::string> end_of_turn_texts(ChatTemplate t);

}  // namespace kvlens
