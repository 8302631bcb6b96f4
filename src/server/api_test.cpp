// The API layer without HTTP: request validation (every refusal names its parameter), the reasoning split
// that streaming relies on, base64 floats. End to end over HTTP with the official OpenAI client:
// tests/python/test_server_openai.py.
#include "server/api.h"

#include <gtest/gtest.h>

#include <cstdio>
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

// A logistic calibration: p_correct.combined per choice, the weighted vote on it, kvlens.score limited to
// it; refused at start for another model.
TEST_F(ServerApi, LogisticCalibration) {
    Calibration c = calibration_from_json(
        R"({"format":"kvlens-calibration","version":2,"method":"logistic","score":"combined","direction":1,)"
        R"("features":["kv_coe_r","max_prob","neg_length"],"mean":[0,0.001,-3],"std":[0.1,0.001,1],)"
        R"("weights":[0.5,1,0.3],"bias":0.2,"ridge":1})",
        "test");
    const ModelInfo& mi = llama->info();
    c.model = calibration_model_of(llama->path(), mi.name, mi.arch, mi.n_layer);
    ApiParams p;
    p.session.n_ctx = 128;
    p.calibration_path = testing::TempDir() + "/combined.json";
    save_calibration(c, p.calibration_path);
    const Api api(*llama, p);
    const json body = {
        {"messages", user("hi")}, {"n", 3}, {"max_tokens", 3}, {"kvlens", {{"select", "weighted"}}}};
    const ChatRequest r = api.parse_chat(body);
    EXPECT_EQ(r.select_score, "combined");
    const json resp = api.chat(r);
    for (const json& ch : resp["choices"]) {
        const json& s = ch["kvlens"]["scores"];
        std::map<std::string, double> m;
        for (const auto& [k, v] : s.items())
            if (v.is_number()) m[k] = v.get<double>();
        EXPECT_DOUBLE_EQ(s["p_correct.combined"].get<double>(), c.apply(m));
    }
    EXPECT_EQ(resp["kvlens"]["selection"]["score"], "combined");
    // Best-of-N: the confidence is the chosen answer's combined probability.
    json best = body;
    best["kvlens"]["select"] = "best";
    const json rb = api.chat(api.parse_chat(best));
    const json& sel = rb["kvlens"]["selection"];
    EXPECT_DOUBLE_EQ(
        sel["confidence"].get<double>(),
        rb["choices"][sel["index"].get<int>()]["kvlens"]["scores"]["p_correct.combined"].get<double>());
    json other = body;
    other["kvlens"]["score"] = "kv_coe_r";
    try {
        api.parse_chat(other);
        ADD_FAILURE() << "another selection score accepted beside a combined calibration";
    } catch (const ApiError& e) {
        EXPECT_EQ(e.param, "kvlens.score");
    }
    try {
        const Api wrong(*qwen3, p);
        ADD_FAILURE() << "a calibration for tiny-llama accepted for tiny-qwen3";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'tiny-llama.gguf'"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("'tiny-qwen3.gguf'"), std::string::npos) << e.what();
    }
    std::remove(p.calibration_path.c_str());
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
