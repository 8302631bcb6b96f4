// The API layer without HTTP: request validation (every refusal names its parameter), the reasoning split
// that streaming relies on, base64 floats. End to end over HTTP with the official OpenAI client:
// tests/python/test_server_openai.py.
#include "service/openai_api.h"
#include "server/server.h"

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
        // Limits (issue 15): n beyond the bound, stop strings too long, a length beyond the context,
        // scores_every out of bounds (too many messages: LimitsFollowTheServer).
        {{{"n", 65}}, "n"},  // the library's bound (kvlens serve: --max-n, 8)
        {{{"n", 1000000}}, "n"},
        {{{"stop", std::string(257, 'x')}}, "stop"},
        {{{"stop", json::array({"a", std::string(300, 'y')})}}, "stop"},
        {{{"max_tokens", 64}}, "max_tokens"},  // the context is 64: prompt + answer can never fit
        {{{"max_tokens", 1 << 24}}, "max_tokens"},
        {{{"max_completion_tokens", 100}}, "max_completion_tokens"},
        {{{"kvlens", {{"abstain_below", -0.5}}}}, "kvlens.abstain_below"},  // named in full, as the others
        {{{"kvlens", {{"scores_every", -1}}}}, "kvlens.scores_every"},
        {{{"kvlens", {{"scores_every", (1 << 20) + 1}}}}, "kvlens.scores_every"},
        {{{"kvlens", {{"scores_every", "often"}}}}, "kvlens.scores_every"},
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
    EXPECT_EQ(api.parse_chat({{"messages", user("hi")}, {"max_tokens", 63}}).max_tokens, 63);  // fits
    EXPECT_EQ(api.parse_chat({{"messages", user("hi")}, {"n", 64}}).n, 64);
    EXPECT_EQ(api.parse_chat({{"messages", user("hi")}, {"stop", std::string(256, 'x')}}).stop.size(), 1u);
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

// The server's limits are its flags: --max-n, --max-messages; the message says which flag.
TEST_F(ServerApi, LimitsFollowTheServer) {
    ApiParams p;
    p.session.n_ctx = 64;
    p.max_n = 2;
    p.max_messages = 3;
    p.max_stop_bytes = 4;
    const Api api(*qwen3, p);
    json many = json::array();
    for (int i = 0; i < 4; ++i) many.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", "x"}});
    many.push_back({{"role", "user"}, {"content", "x"}});
    struct Case {
        json body;
        std::string param, says;
    };
    const Case cases[] = {
        {{{"messages", user("hi")}, {"n", 3}}, "n", "--max-n"},
        {{{"messages", many}}, "messages", "--max-messages"},
        {{{"messages", user("hi")}, {"stop", "abcde"}}, "stop", "5 bytes"},
        {{{"messages", user("hi")}, {"max_tokens", 80}}, "max_tokens", "context of 64"},
    };
    for (const Case& c : cases) {
        try {
            api.parse_chat(c.body);
            ADD_FAILURE() << "accepted: " << c.body.dump();
        } catch (const ApiError& e) {
            EXPECT_EQ(e.status, 400);
            EXPECT_EQ(e.param, c.param) << e.what();
            EXPECT_NE(std::string(e.what()).find(c.says), std::string::npos) << e.what();
            EXPECT_EQ(api_error_json(e.what(), e.type, e.param)["error"]["param"], c.param);
        }
    }
    EXPECT_NO_THROW(api.parse_chat({{"messages", user("hi")}, {"n", 2}, {"stop", "abcd"}}));
    ApiParams bad = p;
    bad.max_n = 0;
    EXPECT_THROW(Api(*qwen3, bad), Error);
    bad = p;
    bad.timeout_s = -1;
    EXPECT_THROW(Api(*qwen3, bad), Error);
}

TEST(ServerAuth, SameSecret) {
    EXPECT_TRUE(same_secret("", ""));
    EXPECT_TRUE(same_secret("sk-abc", "sk-abc"));
    EXPECT_FALSE(same_secret("sk-abc", "sk-abd"));
    EXPECT_FALSE(same_secret("sk-abc", "sk-ab"));
    EXPECT_FALSE(same_secret("sk-ab", "sk-abc"));
    EXPECT_FALSE(same_secret("", "x"));
    EXPECT_FALSE(same_secret(std::string("a\0", 2), "a"));  // a NUL is a byte like any other
}

TEST(ServerAuth, BearerHeader) {
    EXPECT_TRUE(bearer_matches("Bearer sk-1", "sk-1"));
    EXPECT_TRUE(bearer_matches("bearer sk-1", "sk-1"));  // the scheme is case-insensitive (RFC 7235)
    EXPECT_TRUE(bearer_matches("BEARER  sk-1", "sk-1"));
    EXPECT_FALSE(bearer_matches("Bearer sk-2", "sk-1"));
    EXPECT_FALSE(bearer_matches("Bearer sk-1x", "sk-1"));
    EXPECT_FALSE(bearer_matches("Basic sk-1", "sk-1"));
    EXPECT_FALSE(bearer_matches("sk-1", "sk-1"));
    EXPECT_FALSE(bearer_matches("", "sk-1"));
    EXPECT_FALSE(bearer_matches("Bearer ", "sk-1"));
}

// admit(): parallel + queue requests at once, the next one a 503 (server_error, overloaded) until one leaves.
TEST_F(ServerApi, AdmissionIsBounded) {
    ApiParams p;
    p.parallel = 2;
    p.queue = 1;
    const Api api(*llama, p);
    EXPECT_EQ(api.max_admitted(), 3);
    std::vector<std::shared_ptr<void>> in;
    for (int i = 0; i < 3; ++i) in.push_back(api.admit());
    try {
        api.admit();
        ADD_FAILURE() << "a fourth request admitted";
    } catch (const ApiError& e) {
        EXPECT_EQ(e.status, 503);
        EXPECT_EQ(e.type, "server_error");
        EXPECT_EQ(e.code, "overloaded");
        EXPECT_NE(std::string(e.what()).find("--queue"), std::string::npos) << e.what();
        const json j = api_error_json(e.what(), e.type, e.param, e.code);
        EXPECT_EQ(j["error"]["code"], "overloaded");
        EXPECT_TRUE(j["error"]["param"].is_null());
    }
    in.pop_back();
    EXPECT_NO_THROW(in.push_back(api.admit()));
    in.clear();
    const Api unbounded(*llama, ApiParams{});  // the library's default: never refuses
    EXPECT_EQ(unbounded.max_admitted(), 0);
    for (int i = 0; i < 100; ++i) in.push_back(unbounded.admit());
    in.clear();  // handles must not outlive their Api (ASan: stack-use-after-scope when unbounded went first)
}

// The timeout stops an answer after the token it is noticed at: finish_reason length, kvlens.timeout; the
// stream ends the same way.
TEST_F(ServerApi, TimeoutCutsTheAnswer) {
    ApiParams p;
    p.session.n_ctx = 256;
    p.session.n_threads = 1;
    p.timeout_s = 1e-9;
    const Api api(*llama, p);
    const json body = {{"messages", user("hi")}, {"max_tokens", 100}, {"temperature", 0}};
    const json r = api.chat(api.parse_chat(body));
    EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(r["kvlens"]["timeout"], true);
    EXPECT_EQ(r["kvlens"]["stop"], "timeout");
    EXPECT_EQ(r["kvlens"]["n_generated"], 1);
    EXPECT_EQ(r["usage"]["completion_tokens"], 1);
    json last;
    json streamed = body;
    streamed["stream"] = true;
    api.chat(api.parse_chat(streamed), [&](const json& c) {
        last = c;
        return true;
    });
    EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(last["kvlens"]["timeout"], true);
    // Without a timeout the same request runs to max_tokens and says nothing of one.
    const Api untimed(*llama, ApiParams{p.model_id, p.session});
    const json full = untimed.chat(untimed.parse_chat(body));
    EXPECT_EQ(full["kvlens"]["n_generated"], 100);
    EXPECT_FALSE(full["kvlens"].contains("timeout"));
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

// The shared batch reuses sequence ids: a request that comes after others on the same slot (one that ran to
// the end, one whose client went away mid-answer) gets exactly what it got first; nothing of theirs stays.
TEST_F(ServerApi, ASlotReusedAfterAFinishedOrDroppedRequestStartsClean) {
    ApiParams p;
    p.session.n_ctx = 256;
    p.session.n_threads = 1;
    p.parallel = 1;  // one sequence id: every request reuses it
    const Api api(*llama, p);
    const json a = {{"messages", user("hi")}, {"max_tokens", 20}, {"temperature", 0}};
    const json b = {{"messages", user("something else, longer")}, {"max_tokens", 30}, {"temperature", 0}};
    const json first = api.chat(api.parse_chat(a));
    ASSERT_EQ(first["kvlens"]["n_generated"], 20);
    api.chat(api.parse_chat(b));
    json dropped = b;
    dropped["stream"] = true;
    dropped["max_tokens"] = 200;
    int chunks = 0;
    EXPECT_TRUE(api.chat(api.parse_chat(dropped), [&](const json&) { return ++chunks < 3; }).is_null());
    EXPECT_EQ(chunks, 3);  // the client went away: nothing more was sent to it
    json again = api.chat(api.parse_chat(a));
    EXPECT_EQ(again["choices"], first["choices"]);
    EXPECT_GT(again["kvlens"]["cost"]["wall_ms"].get<double>(), 0);
    again["kvlens"]["cost"]["wall_ms"] = first["kvlens"]["cost"]["wall_ms"];  // the clock alone may differ
    EXPECT_EQ(again["kvlens"], first["kvlens"]);
}
