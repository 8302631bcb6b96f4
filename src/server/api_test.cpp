// The API layer without HTTP: request validation (every refusal names its parameter), the reasoning split
// that streaming relies on, base64 floats. End to end over HTTP with the official OpenAI client:
// tests/python/test_server_openai.py.
#include "server/api.h"

#include <gtest/gtest.h>

#include <cstring>

using namespace kvlens;
using nlohmann::json;

namespace {

const std::string kModels = KVLENS_TEST_MODELS_DIR;

TEST(ServerBase64, LittleEndianFloat32) {
    EXPECT_EQ(floats_base64({1.0f}), "AACAPw==");             // 00 00 80 3f
    EXPECT_EQ(floats_base64({1.0f, -2.0f}), "AACAPwAAAMA=");  // + 00 00 00 c0
    EXPECT_EQ(floats_base64({0.0f, 0.0f, 0.0f}), "AAAAAAAAAAAAAAAA");
    EXPECT_EQ(floats_base64({}), "");
}

TEST(ServerReasoning, Split) {
    struct Case {
        std::string text;
        bool prompt_opens;
        std::string reasoning, content;
    };
    const Case cases[] = {
        {"Answer: 5", false, "", "Answer: 5"},
        {"<think>\n2+3=5\n</think>\n\nAnswer: 5", false, "2+3=5\n", "Answer: 5"},
        {"<think>\n2+3", false, "2+3", ""},  // still thinking
        {"<thi", false, "", ""},             // the tag is not complete yet
        {"<think>", false, "", ""},
        {"2+3=5\n</think>\n\nAnswer: 5", true, "2+3=5\n", "Answer: 5"},  // DeepSeek-R1: the prompt opened it
        {"2+3", true, "2+3", ""},
        {"<think>\n\n</think>\n\nAnswer: 5", false, "", "Answer: 5"},
        {"a </think> b", false, "", "a </think> b"},  // it did not think: the tag is text
        {"a </think> b", true, "a ", "b"},
    };
    for (const Case& c : cases) {
        std::string r, t;
        split_reasoning(c.text, c.prompt_opens, r, t);
        EXPECT_EQ(r, c.reasoning) << c.text;
        EXPECT_EQ(t, c.content) << c.text;
    }
}

struct ServerApi : testing::Test {
    static void SetUpTestSuite() {
        set_verbose(false);
        qwen3 = std::make_unique<Model>(ModelParams{kModels + "/tiny-qwen3.gguf"});
        llama = std::make_unique<Model>(ModelParams{kModels + "/tiny-llama.gguf"});
    }
    static void TearDownTestSuite() {
        qwen3.reset();
        llama.reset();
    }
    static std::unique_ptr<Model> qwen3, llama;
};
std::unique_ptr<Model> ServerApi::qwen3, ServerApi::llama;

json user(const std::string& text) {
    return json::array({{{"role", "user"}, {"content", text}}});
}

TEST_F(ServerApi, RefusalsNameTheParameter) {
    ApiParams p;
    p.session.n_ctx = 64;
    const Api api(*qwen3, p);
    const json ok = {{"messages", user("hi")}};
    EXPECT_NO_THROW(api.parse_chat(ok));
    struct Case {
        json patch;  // merged into ok (null removes)
        std::string param;
    };
    const Case cases[] = {
        {{{"messages", json::array()}}, "messages"},
        {{{"messages", "hi"}}, "messages"},
        {{{"messages", json::array({42})}}, "messages[0]"},
        {{{"messages", json::array({{{"content", "x"}}})}}, "messages[0].role"},
        {{{"messages", json::array({{{"role", "tool"}, {"content", "x"}}})}}, "messages[0].role"},
        {{{"messages", json::array({{{"role", "user"}}})}}, "messages[0].content"},
        {{{"messages", json::array({{{"role", "user"}, {"content", 7}}})}}, "messages[0].content"},
        {{{"messages",
           json::array({{{"role", "user"}, {"content", json::array({{{"type", "image_url"}}})}}})}},
         "messages[0].content[0]"},
        {{{"messages", json::array({{{"role", "assistant"}, {"content", "x"}}})}}, "messages"},
        {{{"temperature", 2.5}}, "temperature"},
        {{{"temperature", "hot"}}, "temperature"},
        {{{"top_p", 0}}, "top_p"},
        {{{"max_tokens", 0}}, "max_tokens"},
        {{{"max_tokens", 1.5}}, "max_tokens"},
        {{{"max_completion_tokens", -3}}, "max_completion_tokens"},
        {{{"n", 0}}, "n"},
        {{{"n", 2}, {"stream", true}}, "stream"},
        {{{"n", 2}, {"kvlens", {{"select", "weighted"}}}}, "kvlens.select"},  // no calibration
        {{{"n", 2}, {"kvlens", {{"select", "best"}, {"abstain_below", 0.5}}}}, "kvlens.abstain_below"},
        {{{"kvlens", {{"select", "loudest"}}}}, "kvlens.select"},
        {{{"kvlens", {{"score", "vibes"}}}}, "kvlens.score"},
        {{{"kvlens", {{"matcher", "regex"}}}}, "kvlens.matcher"},
        {{{"kvlens", 1}}, "kvlens"},
        {{{"stop", json::array({"a", "b", "c", "d", "e"})}}, "stop"},
        {{{"stop", ""}}, "stop"},
        {{{"stop", 5}}, "stop"},
        {{{"stream", "yes"}}, "stream"},
        {{{"stream_options", 1}}, "stream_options"},
        {{{"logprobs", true}}, "logprobs"},
        {{{"tools", json::array({{{"type", "function"}}})}}, "tools"},
        {{{"response_format", {{"type", "json_object"}}}}, "response_format"},
        {{{"think", "maybe"}}, "think"},
        {{{"think", "auto"}}, "think"},  // no router
        {{{"chat_template_kwargs", 3}}, "chat_template_kwargs"},
    };
    for (const Case& c : cases) {
        json body = ok;
        body.update(c.patch);
        try {
            api.parse_chat(body);
            ADD_FAILURE() << "accepted: " << body.dump();
        } catch (const ApiError& e) {
            EXPECT_EQ(e.status, 400);
            EXPECT_EQ(e.param, c.param) << e.what();
            EXPECT_EQ(std::string(e.what()).rfind(c.param + ": ", 0), 0u) << e.what();
        }
    }
    // Accepted spellings: developer role, text parts, null fields, llama-server's enable_thinking.
    json body = {{"messages", json::array({{{"role", "developer"}, {"content", "be brief"}},
                                           {{"role", "user"},
                                            {"content", json::array({{{"type", "text"}, {"text", "h"}},
                                                                     {{"type", "text"}, {"text", "i"}}})}}})},
                 {"temperature", nullptr},
                 {"chat_template_kwargs", {{"enable_thinking", false}}},
                 {"stop", "x"}};
    const ChatRequest r = api.parse_chat(body);
    EXPECT_EQ(r.messages[0].role, "system");
    EXPECT_EQ(r.messages[1].content, "hi");
    EXPECT_EQ(r.think, "off");
    EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
    EXPECT_EQ(r.stop, std::vector<std::string>{"x"});

    // A model without thinking refuses "think"; a prompt longer than the context is a 400 on messages.
    const Api plain(*llama, p);
    try {
        plain.parse_chat({{"messages", user("hi")}, {"think", "on"}});
        ADD_FAILURE();
    } catch (const ApiError& e) {
        EXPECT_EQ(e.param, "think");
    }
    std::string lng;
    for (int i = 0; i < 200; ++i) lng += "word ";
    try {
        api.chat(api.parse_chat({{"messages", user(lng)}}));
        ADD_FAILURE();
    } catch (const ApiError& e) {
        EXPECT_EQ(e.status, 400);
        EXPECT_EQ(e.param, "messages");
        EXPECT_NE(std::string(e.what()).find("context of 64"), std::string::npos) << e.what();
    }
}

TEST_F(ServerApi, EmbeddingRefusals) {
    const Api api(*llama, ApiParams{});
    const json cases[] = {json::object(),
                          {{"input", 3}},
                          {{"input", json::array()}},
                          {{"input", json::array({1, 2})}},
                          {{"input", ""}},
                          {{"input", "x"}, {"encoding_format", "hex"}},
                          {{"input", "x"}, {"dimensions", 3}}};
    const std::string params[] = {"input",    "input",           "input",     "input[0]",
                                  "input[0]", "encoding_format", "dimensions"};
    for (size_t i = 0; i < std::size(cases); ++i) {
        try {
            api.embeddings(cases[i]);
            ADD_FAILURE() << cases[i].dump();
        } catch (const ApiError& e) {
            EXPECT_EQ(e.param, params[i]) << e.what();
        }
    }
}

}  // namespace
