// Checks that make-tiny-gguf writes models llama.cpp loads, shaped as requested, deterministic in the
// seed, and with tokenizers and chat templates the engine tests rely on.

#include <gtest/gtest.h>
#include <llama.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace kvlens {
namespace {

namespace fs = std::filesystem;

const std::string kModelsDir = KVLENS_TEST_MODELS_DIR;
const std::string kTool = std::string(KVLENS_BIN_DIR) + "/make-tiny-gguf";

void quiet_log(ggml_log_level, const char*, void*) {}

class LlamaEnvironment : public ::testing::Environment {
public:
    void SetUp() override {
        llama_log_set(quiet_log, nullptr);
        llama_backend_init();
    }
    void TearDown() override { llama_backend_free(); }
};
[[maybe_unused]] const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new LlamaEnvironment);

struct ModelDeleter {
    void operator()(llama_model* m) const { llama_model_free(m); }
};
struct ContextDeleter {
    void operator()(llama_context* c) const { llama_free(c); }
};
using ModelPtr = std::unique_ptr<llama_model, ModelDeleter>;
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;

ModelPtr load(const std::string& path) {
    llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = 0;
    return ModelPtr(llama_model_load_from_file(path.c_str(), params));
}

std::string meta(const llama_model* model, const char* key) {
    char buf[256];
    return llama_model_meta_val_str(model, key, buf, sizeof(buf)) < 0 ? std::string() : std::string(buf);
}

std::vector<llama_token> tokenize(const llama_model* model, const std::string& text) {
    const llama_vocab* vocab = llama_model_get_vocab(model);
    std::vector<llama_token> tokens(text.size() + 8);
    const int n = llama_tokenize(vocab, text.c_str(), static_cast<int32_t>(text.size()), tokens.data(),
                                 static_cast<int32_t>(tokens.size()), /*add_special=*/false,
                                 /*parse_special=*/true);
    tokens.resize(n < 0 ? 0 : static_cast<size_t>(n));
    return tokens;
}

// Logits of the last token after decoding `text`.
std::vector<float> last_logits(const llama_model* model, const std::string& text) {
    std::vector<llama_token> tokens = tokenize(model, text);
    if (tokens.empty()) return {};
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 128;
    cparams.n_batch = 128;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    ContextPtr ctx(llama_init_from_model(const_cast<llama_model*>(model), cparams));
    if (!ctx) return {};
    if (llama_decode(ctx.get(), llama_batch_get_one(tokens.data(), static_cast<int32_t>(tokens.size()))) !=
        0) {
        return {};
    }
    const float* logits = llama_get_logits_ith(ctx.get(), -1);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    return std::vector<float>(logits, logits + n_vocab);
}

bool all_finite(const std::vector<float>& v) {
    for (float x : v) {
        if (!std::isfinite(x)) return false;
    }
    return true;
}

double correlation(const std::vector<float>& a, const std::vector<float>& b) {
    double ma = 0, mb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        ma += a[i];
        mb += b[i];
    }
    ma /= a.size();
    mb /= b.size();
    double sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    return sab / std::sqrt(saa * sbb);
}

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs make-tiny-gguf; returns its exit code, with stderr in `err`.
int run_tool(const std::string& args, const fs::path& err_file, std::string* err = nullptr) {
    const std::string cmd = "\"" + kTool + "\" " + args + " 2> \"" + err_file.string() + "\"";
    const int status = std::system(cmd.c_str());
    if (err) *err = read_bytes(err_file);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A fresh directory per test for models the test makes itself.
class ToolTest : public ::testing::Test {
protected:
    void SetUp() override {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::temp_directory_path() /
               ("kvlens-tiny-gguf-" + std::string(info->name()) + "-" + std::to_string(::getpid()));
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    // Writes a small model with the built-in tokenizer; returns its path.
    fs::path make(const std::string& name, const std::string& args) {
        const fs::path out = dir_ / name;
        std::string err;
        EXPECT_EQ(run_tool("--out \"" + out.string() + "\" " + args, dir_ / "stderr.txt", &err), 0) << err;
        return out;
    }

    fs::path dir_;
};

// ---- the models the build generates (tests/cmake/10-tiny-models.cmake: keep the shapes in sync) -------

struct Expected {
    const char* file;
    const char* arch;
    int layers;
    llama_ftype ftype;
};

constexpr int kEmbd = 64;
constexpr int kHeads = 4;
constexpr int kHeadsKv = 2;

class BuiltModel : public ::testing::TestWithParam<Expected> {};

// Test names from file names ("tiny-llama-q8_0.gguf" -> "tiny_llama_q8_0"), and gtest prints the file
// rather than the struct's bytes (which hold pointers and would make ctest's test names vary by build).
std::string test_name(const std::string& file) {
    std::string name = file.substr(0, file.find('.'));
    std::replace(name.begin(), name.end(), '-', '_');
    return name;
}
std::string param_name(const ::testing::TestParamInfo<Expected>& param) {
    return test_name(param.param.file);
}
void PrintTo(const Expected& e, std::ostream* os) {
    *os << e.file;
}

TEST_P(BuiltModel, LoadsWithRequestedShape) {
    const Expected& e = GetParam();
    ModelPtr model = load(kModelsDir + "/" + e.file);
    ASSERT_TRUE(model) << e.file;
    EXPECT_EQ(meta(model.get(), "general.architecture"), e.arch);
    EXPECT_EQ(llama_model_n_layer(model.get()), e.layers);
    EXPECT_EQ(llama_model_n_embd(model.get()), kEmbd);
    EXPECT_EQ(llama_model_n_head(model.get()), kHeads);
    EXPECT_EQ(llama_model_n_head_kv(model.get()), kHeadsKv);
    EXPECT_EQ(llama_model_ftype(model.get()), e.ftype);
}

TEST_P(BuiltModel, DecodesToFiniteLogits) {
    ModelPtr model = load(kModelsDir + "/" + GetParam().file);
    ASSERT_TRUE(model);
    const std::vector<float> logits = last_logits(model.get(), "Hello world, this is a test.");
    ASSERT_FALSE(logits.empty());
    EXPECT_TRUE(all_finite(logits));
    // Random weights at unit scale give a spread of logits, not a flat distribution.
    const auto [lo, hi] = std::minmax_element(logits.begin(), logits.end());
    EXPECT_GT(*hi - *lo, 1.0f);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, BuiltModel,
                         ::testing::Values(Expected{"tiny-llama.gguf", "llama", 2, LLAMA_FTYPE_ALL_F32},
                                           Expected{"tiny-qwen2.gguf", "qwen2", 2, LLAMA_FTYPE_ALL_F32},
                                           Expected{"tiny-qwen3.gguf", "qwen3", 3, LLAMA_FTYPE_ALL_F32},
                                           Expected{"tiny-llama-q8_0.gguf", "llama", 2,
                                                    LLAMA_FTYPE_MOSTLY_Q8_0}),
                         param_name);

class QwenModel : public ::testing::TestWithParam<const char*> {};

TEST_P(QwenModel, ImStartIsOneToken) {
    ModelPtr model = load(kModelsDir + "/" + GetParam());
    ASSERT_TRUE(model);
    const std::vector<llama_token> tokens = tokenize(model.get(), "<|im_start|>user");
    ASSERT_GE(tokens.size(), 2u);
    EXPECT_STREQ(llama_vocab_get_text(llama_model_get_vocab(model.get()), tokens[0]), "<|im_start|>");
}

INSTANTIATE_TEST_SUITE_P(TinyModels, QwenModel, ::testing::Values("tiny-qwen2.gguf", "tiny-qwen3.gguf"),
                         [](const ::testing::TestParamInfo<const char*>& param) {
                             return test_name(param.param);
                         });

TEST(TinyQwen3, ThinkTagsAreSingleTokensAndInTheTemplate) {
    ModelPtr model = load(kModelsDir + "/tiny-qwen3.gguf");
    ASSERT_TRUE(model);
    const llama_vocab* vocab = llama_model_get_vocab(model.get());
    const std::vector<llama_token> tokens = tokenize(model.get(), "<think>x</think>");
    ASSERT_EQ(tokens.size(), 3u);
    EXPECT_STREQ(llama_vocab_get_text(vocab, tokens[0]), "<think>");
    EXPECT_STREQ(llama_vocab_get_text(vocab, tokens[2]), "</think>");
    const char* tmpl = llama_model_chat_template(model.get(), nullptr);
    ASSERT_NE(tmpl, nullptr);
    EXPECT_NE(std::string(tmpl).find("<think>"), std::string::npos);
}

// llama.cpp recognises the templates (ChatML for Qwen, Llama 3 when the vocab has its header tokens).
TEST(TinyModels, ChatTemplatesApply) {
    const llama_chat_message chat[] = {{"user", "hi"}};
    for (const char* file : {"tiny-llama.gguf", "tiny-qwen2.gguf", "tiny-qwen3.gguf"}) {
        ModelPtr model = load(kModelsDir + "/" + file);
        ASSERT_TRUE(model) << file;
        const char* tmpl = llama_model_chat_template(model.get(), nullptr);
        ASSERT_NE(tmpl, nullptr) << file;
        std::vector<char> buf(512);
        const int n =
            llama_chat_apply_template(tmpl, chat, 1, true, buf.data(), static_cast<int32_t>(buf.size()));
        ASSERT_GT(n, 0) << file;
        const std::string text(buf.data(), static_cast<size_t>(n));
        const bool llama3 = std::string(file) == "tiny-llama.gguf" && KVLENS_TINY_HAVE_VOCAB;
        EXPECT_EQ(text, llama3 ? "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                                 "<|start_header_id|>assistant<|end_header_id|>\n\n"
                               : "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
            << file;
    }
}

// The Q8_0 model is the F32 model quantized: same seed, so the same logits up to quantization error.
TEST(TinyModels, Q8_0MatchesF32) {
    ModelPtr f32 = load(kModelsDir + "/tiny-llama.gguf");
    ModelPtr q8 = load(kModelsDir + "/tiny-llama-q8_0.gguf");
    ASSERT_TRUE(f32 && q8);
    const std::vector<float> a = last_logits(f32.get(), "The quick brown fox");
    const std::vector<float> b = last_logits(q8.get(), "The quick brown fox");
    ASSERT_EQ(a.size(), b.size());
    ASSERT_FALSE(a.empty());
    EXPECT_GT(correlation(a, b), 0.99);
}

// ---- the tool itself ------------------------------------------------------------------------------------

TEST_F(ToolTest, SameSeedSameBytes) {
    for (const char* arch : {"llama", "qwen2", "qwen3"}) {
        const std::string args = std::string("--arch ") + arch + " --seed 7 --layers 2";
        const std::string a = read_bytes(make("a.gguf", args));
        const std::string b = read_bytes(make("b.gguf", args));
        ASSERT_FALSE(a.empty()) << arch;
        EXPECT_TRUE(a == b) << arch << ": two runs with the same seed differ";
    }
    // Quantization is deterministic too.
    const std::string a = read_bytes(make("a-q8.gguf", "--arch llama --seed 7 --quantize q8_0"));
    const std::string b = read_bytes(make("b-q8.gguf", "--arch llama --seed 7 --quantize q8_0"));
    ASSERT_FALSE(a.empty());
    EXPECT_TRUE(a == b);
}

TEST_F(ToolTest, DifferentSeedsGiveDifferentFiniteLogits) {
    ModelPtr a = load(make("a.gguf", "--arch qwen3 --seed 1").string());
    ModelPtr b = load(make("b.gguf", "--arch qwen3 --seed 2").string());
    ASSERT_TRUE(a && b);
    const std::vector<float> la = last_logits(a.get(), "<|im_start|>user\nhello<|im_end|>");
    const std::vector<float> lb = last_logits(b.get(), "<|im_start|>user\nhello<|im_end|>");
    ASSERT_EQ(la.size(), lb.size());
    ASSERT_FALSE(la.empty());
    EXPECT_TRUE(all_finite(la));
    EXPECT_TRUE(all_finite(lb));
    EXPECT_LT(correlation(la, lb), 0.9);
}

TEST_F(ToolTest, HonoursShapeOptions) {
    ModelPtr model = load(make("m.gguf",
                               "--arch llama --layers 3 --embd 32 --heads 8 --heads-kv 1 --head-dim 8 --ff "
                               "48 --ctx 256 --type f16")
                              .string());
    ASSERT_TRUE(model);
    EXPECT_EQ(llama_model_n_layer(model.get()), 3);
    EXPECT_EQ(llama_model_n_embd(model.get()), 32);
    EXPECT_EQ(llama_model_n_head(model.get()), 8);
    EXPECT_EQ(llama_model_n_head_kv(model.get()), 1);
    EXPECT_EQ(llama_model_n_ctx_train(model.get()), 256);
    EXPECT_EQ(llama_model_ftype(model.get()), LLAMA_FTYPE_MOSTLY_F16);
    EXPECT_TRUE(all_finite(last_logits(model.get(), "abc")));
}

TEST_F(ToolTest, BadInputIsOneLineAndExitOne) {
    const std::vector<std::string> bad = {
        "--arch mistral --out x.gguf",
        "--arch llama",
        "--arch llama --out x.gguf --vocab /nonexistent/vocab.gguf",
        "--arch llama --out x.gguf --heads 4 --heads-kv 3",
        "--arch llama --out x.gguf --layers two",
        "--arch llama --out x.gguf --quantize q4_0",
        "--arch llama --out x.gguf --embd 48 --embd-type q8_0",
        "--arch llama --out /nonexistent/dir/x.gguf",
        "--arch llama --out /nonexistent/dir/x.gguf --quantize q8_0",
    };
    for (const auto& args : bad) {
        std::string err;
        EXPECT_EQ(run_tool(args, dir_ / "stderr.txt", &err), 1) << args;
        EXPECT_EQ(err.rfind("make-tiny-gguf: ", 0), 0u) << args << ": " << err;
        EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << args << ": " << err;
    }
}

}  // namespace
}  // namespace kvlens
