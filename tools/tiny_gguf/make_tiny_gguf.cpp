// make-tiny-gguf: writes a tiny random-weight llama / qwen2 / qwen3 GGUF that llama.cpp loads, so tests
// need no model downloads. Output bytes depend only on the arguments (and the vocab file), never on the
// machine's state: same seed, same file.

#include <ggml.h>
#include <gguf.h>
#include <llama.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace kvlens {
namespace {

constexpr const char* kUsage =
    "usage: make-tiny-gguf --arch llama|qwen2|qwen3 --out FILE [--vocab VOCAB.gguf]\n"
    "         [--layers 2] [--embd 64] [--heads 4] [--heads-kv 2] [--head-dim 16] [--ff 128] [--ctx 512]\n"
    "         [--seed 1] [--type f32|f16] [--embd-type f32|f16|q8_0] [--quantize q8_0]\n"
    "  --type       type of the per-layer weight matrices (norms and biases stay f32)\n"
    "  --embd-type  type of token_embd and output (default f16: a 150k-token vocab stays small;\n"
    "               q8_0 halves that again)\n"
    "  --quantize   write f32/f16 first, then quantize it with llama_model_quantize into --out\n"
    "  without --vocab a built-in byte-level BPE tokenizer (256 bytes + ChatML/think tokens) is written\n";

struct Options {
    std::string arch;
    std::string out;
    std::string vocab;
    int layers = 2;
    int embd = 64;
    int heads = 4;
    int heads_kv = 2;
    int head_dim = 16;
    int ff = 128;
    int ctx = 512;
    uint32_t seed = 1;
    ggml_type type = GGML_TYPE_F32;
    ggml_type embd_type = GGML_TYPE_F16;
    std::string quantize;
};

struct GgufDeleter {
    void operator()(gguf_context* ctx) const { gguf_free(ctx); }
};
struct GgmlDeleter {
    void operator()(ggml_context* ctx) const { ggml_free(ctx); }
};
using GgufPtr = std::unique_ptr<gguf_context, GgufDeleter>;
using GgmlPtr = std::unique_ptr<ggml_context, GgmlDeleter>;

// ---- command line -------------------------------------------------------------------------------------

int parse_int(const std::string& flag, const std::string& value, int min_value) {
    size_t used = 0;
    long long v = 0;
    try {
        v = std::stoll(value, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != value.size() || v < min_value || v > (1LL << 30)) {
        throw std::runtime_error(flag + " " + value +
                                 ": expected an integer >= " + std::to_string(min_value));
    }
    return static_cast<int>(v);
}

ggml_type parse_type(const std::string& flag, const std::string& value, bool allow_q8_0) {
    if (value == "f32") return GGML_TYPE_F32;
    if (value == "f16") return GGML_TYPE_F16;
    if (allow_q8_0 && value == "q8_0") return GGML_TYPE_Q8_0;
    throw std::runtime_error(flag + " " + value +
                             (allow_q8_0 ? ": expected f32, f16 or q8_0" : ": expected f32 or f16"));
}

Options parse_args(int argc, char** argv) {
    Options o;
    struct IntFlag {
        const char* name;
        int* dest;
        int min_value;
    };
    const IntFlag int_flags[] = {{"--layers", &o.layers, 1},
                                 {"--embd", &o.embd, 1},
                                 {"--heads", &o.heads, 1},
                                 {"--heads-kv", &o.heads_kv, 1},
                                 {"--head-dim", &o.head_dim, 2},
                                 {"--ff", &o.ff, 1},
                                 {"--ctx", &o.ctx, 1}};
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "-h" || flag == "--help") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        }
        if (i + 1 >= argc) throw std::runtime_error(flag + ": missing value (see --help)");
        const std::string value = argv[++i];
        bool is_int_flag = false;
        for (const auto& f : int_flags) {
            if (flag == f.name) {
                *f.dest = parse_int(flag, value, f.min_value);
                is_int_flag = true;
            }
        }
        if (is_int_flag) continue;

        if (flag == "--arch") {
            o.arch = value;
        } else if (flag == "--out") {
            o.out = value;
        } else if (flag == "--vocab") {
            o.vocab = value;
        } else if (flag == "--seed") {
            o.seed = static_cast<uint32_t>(parse_int(flag, value, 0));
        } else if (flag == "--type") {
            o.type = parse_type(flag, value, false);
        } else if (flag == "--embd-type") {
            o.embd_type = parse_type(flag, value, true);
        } else if (flag == "--quantize") {
            o.quantize = value;
        } else {
            throw std::runtime_error(flag + ": unknown option (see --help)");
        }
    }
    if (o.arch != "llama" && o.arch != "qwen2" && o.arch != "qwen3") {
        throw std::runtime_error("--arch " + (o.arch.empty() ? std::string("(missing)") : o.arch) +
                                 ": expected llama, qwen2 or qwen3");
    }
    if (o.out.empty()) throw std::runtime_error("--out: missing output file");
    if (o.heads % o.heads_kv != 0) {
        throw std::runtime_error("--heads-kv " + std::to_string(o.heads_kv) + ": must divide --heads " +
                                 std::to_string(o.heads));
    }
    if (o.head_dim % 2 != 0) {
        throw std::runtime_error("--head-dim " + std::to_string(o.head_dim) + ": RoPE needs an even value");
    }
    if (o.embd_type == GGML_TYPE_Q8_0 && o.embd % ggml_blck_size(GGML_TYPE_Q8_0) != 0) {
        throw std::runtime_error("--embd-type q8_0: --embd " + std::to_string(o.embd) +
                                 " is not a multiple of 32");
    }
    if (!o.quantize.empty() && o.quantize != "q8_0") {
        throw std::runtime_error("--quantize " + o.quantize + ": only q8_0 is supported");
    }
    return o;
}

// ---- random numbers -----------------------------------------------------------------------------------

// Box-Muller on raw mt19937 output: std::normal_distribution is implementation-defined, and the files
// must be identical whichever standard library built the tool.
class Normal {
public:
    explicit Normal(uint32_t seed) : gen_(seed) {}

    float operator()() {
        if (has_spare_) {
            has_spare_ = false;
            return static_cast<float>(spare_);
        }
        const double u1 = (static_cast<double>(gen_()) + 1.0) / 4294967296.0;  // (0, 1]: log is finite
        const double u2 = static_cast<double>(gen_()) / 4294967296.0;
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double theta = 2.0 * 3.14159265358979323846 * u2;
        spare_ = r * std::sin(theta);
        has_spare_ = true;
        return static_cast<float>(r * std::cos(theta));
    }

private:
    std::mt19937 gen_;
    double spare_ = 0.0;
    bool has_spare_ = false;
};

// ---- tokenizer ----------------------------------------------------------------------------------------

constexpr int32_t kTokenNormal = 1;       // llama_token_type LLAMA_TOKEN_TYPE_NORMAL
constexpr int32_t kTokenControl = 3;      // LLAMA_TOKEN_TYPE_CONTROL
constexpr int32_t kTokenUserDefined = 4;  // LLAMA_TOKEN_TYPE_USER_DEFINED

std::string utf8(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

// GPT-2 byte-level BPE spells byte b as a printable code point: itself when printable, else 256 + n.
std::vector<std::string> gpt2_byte_tokens() {
    std::vector<std::string> tokens(256);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
        const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        tokens[b] = utf8(printable ? b : next++);
    }
    return tokens;
}

void set_str_array(gguf_context* ctx, const char* key, const std::vector<std::string>& values) {
    std::vector<const char*> ptrs;
    ptrs.reserve(values.size());
    for (const auto& v : values) ptrs.push_back(v.c_str());
    gguf_set_arr_str(ctx, key, ptrs.data(), ptrs.size());
}

// 256 byte tokens and the chat/think specials; no merges, so text splits into bytes (fine for tests).
// Returns the vocab size.
size_t write_builtin_tokenizer(gguf_context* ctx) {
    std::vector<std::string> tokens = gpt2_byte_tokens();
    std::vector<int32_t> types(tokens.size(), kTokenNormal);
    auto add = [&](const char* text, int32_t type) {
        tokens.emplace_back(text);
        types.push_back(type);
        return static_cast<uint32_t>(tokens.size() - 1);
    };
    const uint32_t endoftext = add("<|endoftext|>", kTokenControl);
    add("<|im_start|>", kTokenControl);
    const uint32_t im_end = add("<|im_end|>", kTokenControl);
    // Qwen3 marks these user-defined (not control): they are parsed even without parse_special.
    add("<think>", kTokenUserDefined);
    add("</think>", kTokenUserDefined);

    gguf_set_val_str(ctx, "tokenizer.ggml.model", "gpt2");
    gguf_set_val_str(ctx, "tokenizer.ggml.pre", "default");
    set_str_array(ctx, "tokenizer.ggml.tokens", tokens);
    gguf_set_arr_data(ctx, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types.data(), types.size());
    set_str_array(ctx, "tokenizer.ggml.merges", {});
    gguf_set_val_u32(ctx, "tokenizer.ggml.bos_token_id", endoftext);
    gguf_set_val_u32(ctx, "tokenizer.ggml.eos_token_id", im_end);
    gguf_set_val_u32(ctx, "tokenizer.ggml.padding_token_id", endoftext);
    gguf_set_val_bool(ctx, "tokenizer.ggml.add_bos_token", false);
    return tokens.size();
}

void copy_kv(gguf_context* dst, const gguf_context* src, int64_t id) {
    const char* key = gguf_get_key(src, id);
    switch (gguf_get_kv_type(src, id)) {
        case GGUF_TYPE_UINT8:
            gguf_set_val_u8(dst, key, gguf_get_val_u8(src, id));
            break;
        case GGUF_TYPE_INT8:
            gguf_set_val_i8(dst, key, gguf_get_val_i8(src, id));
            break;
        case GGUF_TYPE_UINT16:
            gguf_set_val_u16(dst, key, gguf_get_val_u16(src, id));
            break;
        case GGUF_TYPE_INT16:
            gguf_set_val_i16(dst, key, gguf_get_val_i16(src, id));
            break;
        case GGUF_TYPE_UINT32:
            gguf_set_val_u32(dst, key, gguf_get_val_u32(src, id));
            break;
        case GGUF_TYPE_INT32:
            gguf_set_val_i32(dst, key, gguf_get_val_i32(src, id));
            break;
        case GGUF_TYPE_FLOAT32:
            gguf_set_val_f32(dst, key, gguf_get_val_f32(src, id));
            break;
        case GGUF_TYPE_UINT64:
            gguf_set_val_u64(dst, key, gguf_get_val_u64(src, id));
            break;
        case GGUF_TYPE_INT64:
            gguf_set_val_i64(dst, key, gguf_get_val_i64(src, id));
            break;
        case GGUF_TYPE_FLOAT64:
            gguf_set_val_f64(dst, key, gguf_get_val_f64(src, id));
            break;
        case GGUF_TYPE_BOOL:
            gguf_set_val_bool(dst, key, gguf_get_val_bool(src, id));
            break;
        case GGUF_TYPE_STRING:
            gguf_set_val_str(dst, key, gguf_get_val_str(src, id));
            break;
        case GGUF_TYPE_ARRAY: {
            const gguf_type elem = gguf_get_arr_type(src, id);
            const size_t n = gguf_get_arr_n(src, id);
            if (elem == GGUF_TYPE_STRING) {
                std::vector<const char*> ptrs(n);
                for (size_t i = 0; i < n; ++i) ptrs[i] = gguf_get_arr_str(src, id, i);
                gguf_set_arr_str(dst, key, ptrs.data(), n);
            } else {
                gguf_set_arr_data(dst, key, elem, gguf_get_arr_data(src, id), n);
            }
            break;
        }
        default:
            throw std::runtime_error(std::string("unsupported GGUF value type for key ") + key);
    }
}

std::vector<std::string> read_str_array(const gguf_context* ctx, int64_t id) {
    std::vector<std::string> out(gguf_get_arr_n(ctx, id));
    for (size_t i = 0; i < out.size(); ++i) out[i] = gguf_get_arr_str(ctx, id, i);
    return out;
}

// Qwen3's added tokens beyond Qwen2's three specials, at Qwen3's ids. Vocab files for Qwen2 keep those
// ids as "[PAD<id>]" placeholders; filling them gives <think>/</think> single tokens at their real ids.
// <think> and the tool tags are user-defined as in Qwen3 (parsed even without parse_special); the
// <|...|> ones are control tokens, which llama.cpp would otherwise force with a warning per token.
struct AddedToken {
    uint32_t id;
    const char* text;
    int32_t type;
};
constexpr AddedToken kQwen3AddedTokens[] = {
    {151646, "<|object_ref_start|>", kTokenControl}, {151647, "<|object_ref_end|>", kTokenControl},
    {151648, "<|box_start|>", kTokenControl},        {151649, "<|box_end|>", kTokenControl},
    {151650, "<|quad_start|>", kTokenControl},       {151651, "<|quad_end|>", kTokenControl},
    {151652, "<|vision_start|>", kTokenControl},     {151653, "<|vision_end|>", kTokenControl},
    {151654, "<|vision_pad|>", kTokenControl},       {151655, "<|image_pad|>", kTokenControl},
    {151656, "<|video_pad|>", kTokenControl},        {151657, "<tool_call>", kTokenUserDefined},
    {151658, "</tool_call>", kTokenUserDefined},     {151659, "<|fim_prefix|>", kTokenControl},
    {151660, "<|fim_middle|>", kTokenControl},       {151661, "<|fim_suffix|>", kTokenControl},
    {151662, "<|fim_pad|>", kTokenControl},          {151663, "<|repo_name|>", kTokenControl},
    {151664, "<|file_sep|>", kTokenControl},         {151665, "<tool_response>", kTokenUserDefined},
    {151666, "</tool_response>", kTokenUserDefined}, {151667, "<think>", kTokenUserDefined},
    {151668, "</think>", kTokenUserDefined},
};

struct VocabInfo {
    size_t n_tokens = 0;
    bool has_llama3_headers = false;
};

bool contains(const std::vector<std::string>& v, const std::string& s) {
    for (const auto& x : v) {
        if (x == s) return true;
    }
    return false;
}

// Copies every tokenizer.* key of the vocab file (its chat template is replaced later).
VocabInfo copy_tokenizer(gguf_context* dst, const std::string& path, const std::string& arch) {
    if (!std::filesystem::is_regular_file(path)) {
        throw std::runtime_error("--vocab " + path + ": no such file");
    }
    gguf_init_params params = {/*no_alloc =*/true, /*ctx =*/nullptr};
    GgufPtr src(gguf_init_from_file(path.c_str(), params));
    if (!src) throw std::runtime_error("--vocab " + path + ": cannot read as a GGUF file");

    const int64_t tokens_id = gguf_find_key(src.get(), "tokenizer.ggml.tokens");
    if (tokens_id < 0 || gguf_get_kv_type(src.get(), tokens_id) != GGUF_TYPE_ARRAY ||
        gguf_get_arr_type(src.get(), tokens_id) != GGUF_TYPE_STRING) {
        throw std::runtime_error("--vocab " + path + ": no tokenizer.ggml.tokens string array");
    }
    for (int64_t i = 0; i < gguf_get_n_kv(src.get()); ++i) {
        if (std::strncmp(gguf_get_key(src.get(), i), "tokenizer.", 10) == 0) copy_kv(dst, src.get(), i);
    }

    std::vector<std::string> tokens = read_str_array(src.get(), tokens_id);
    VocabInfo info;
    info.n_tokens = tokens.size();
    info.has_llama3_headers =
        contains(tokens, "<|start_header_id|>") && contains(tokens, "<|end_header_id|>");

    const int64_t types_id = gguf_find_key(src.get(), "tokenizer.ggml.token_type");
    if (arch != "qwen3" || contains(tokens, "<think>") || types_id < 0 ||
        gguf_get_arr_type(src.get(), types_id) != GGUF_TYPE_INT32 ||
        gguf_get_arr_n(src.get(), types_id) != tokens.size()) {
        return info;
    }
    const auto* src_types = static_cast<const int32_t*>(gguf_get_arr_data(src.get(), types_id));
    std::vector<int32_t> types(src_types, src_types + tokens.size());
    size_t filled = 0;
    for (const auto& t : kQwen3AddedTokens) {
        if (t.id < tokens.size() && tokens[t.id] == "[PAD" + std::to_string(t.id) + "]") {
            tokens[t.id] = t.text;
            types[t.id] = t.type;
            ++filled;
        }
    }
    if (filled == 0) {
        std::fprintf(stderr,
                     "make-tiny-gguf: warning: --vocab %s has no <think> token and no free Qwen3 ids\n",
                     path.c_str());
        return info;
    }
    std::fprintf(stderr,
                 "make-tiny-gguf: added %zu Qwen3 tokens (<think>, </think>, ...) in [PAD] slots of %s\n",
                 filled, path.c_str());
    set_str_array(dst, "tokenizer.ggml.tokens", tokens);
    gguf_set_arr_data(dst, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types.data(), types.size());
    return info;
}

// Short Jinja templates that llama.cpp's built-in detection also maps to ChatML / Llama 3.
constexpr const char* kChatmlTemplate =
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

// Qwen3 style: thinking is on unless enable_thinking is false, which pre-fills an empty think block.
constexpr const char* kQwen3Template =
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}";

constexpr const char* kLlama3Template =
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}";

// ---- weights ------------------------------------------------------------------------------------------

struct Tensor {
    std::string name;
    ggml_type type;
    std::vector<int64_t> ne;  // ggml order, fastest dimension first
    std::vector<uint8_t> bytes;
};

class WeightMaker {
public:
    explicit WeightMaker(uint32_t seed) : normal_(seed) {}

    // mean + std * N(0, 1), stored as `type`.
    void add(const std::string& name, ggml_type type, std::vector<int64_t> ne, float mean, float std_dev) {
        int64_t n = 1;
        for (int64_t d : ne) n *= d;
        std::vector<float> values(static_cast<size_t>(n));
        for (auto& v : values) v = mean + std_dev * normal_();

        const int64_t n_per_row = ne[0];
        Tensor t{name, type, std::move(ne), {}};
        t.bytes.resize(static_cast<size_t>(n / n_per_row) * ggml_row_size(type, n_per_row));
        if (type == GGML_TYPE_F32) {
            std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
        } else if (type == GGML_TYPE_F16) {
            ggml_fp32_to_fp16_row(values.data(), reinterpret_cast<ggml_fp16_t*>(t.bytes.data()), n);
        } else {
            ggml_quantize_chunk(type, values.data(), t.bytes.data(), 0, n / n_per_row, n_per_row, nullptr);
        }
        tensors_.push_back(std::move(t));
    }

    // A projection with unit-variance output for unit-variance input: N(0, 1/fan_in). For the 64..128
    // wide layers here that is std 0.09..0.125; smaller would flatten attention and logits to uniform.
    void add_matrix(const std::string& name, ggml_type type, int64_t fan_in, int64_t fan_out) {
        add(name, type, {fan_in, fan_out}, 0.0f, 1.0f / std::sqrt(static_cast<float>(fan_in)));
    }

    // RMSNorm weights: about 1, with a little noise so that a norm wired to the wrong place shows.
    void add_norm(const std::string& name, int64_t n) { add(name, GGML_TYPE_F32, {n}, 1.0f, 0.02f); }

    const std::vector<Tensor>& tensors() const { return tensors_; }

private:
    Normal normal_;
    std::vector<Tensor> tensors_;
};

std::vector<Tensor> make_weights(const Options& o, size_t n_vocab) {
    const int64_t n_q = int64_t{o.heads} * o.head_dim;
    const int64_t n_kv = int64_t{o.heads_kv} * o.head_dim;
    const auto vocab = static_cast<int64_t>(n_vocab);

    WeightMaker w(o.seed);
    // Unit-scale embeddings: the residual stream then starts at the scale the layers add to it.
    w.add("token_embd.weight", o.embd_type, {o.embd, vocab}, 0.0f, 1.0f);
    for (int il = 0; il < o.layers; ++il) {
        const std::string blk = "blk." + std::to_string(il) + ".";
        w.add_norm(blk + "attn_norm.weight", o.embd);
        w.add_matrix(blk + "attn_q.weight", o.type, o.embd, n_q);
        w.add_matrix(blk + "attn_k.weight", o.type, o.embd, n_kv);
        w.add_matrix(blk + "attn_v.weight", o.type, o.embd, n_kv);
        if (o.arch == "qwen2") {
            w.add(blk + "attn_q.bias", GGML_TYPE_F32, {n_q}, 0.0f, 0.1f);
            w.add(blk + "attn_k.bias", GGML_TYPE_F32, {n_kv}, 0.0f, 0.1f);
            w.add(blk + "attn_v.bias", GGML_TYPE_F32, {n_kv}, 0.0f, 0.1f);
        }
        if (o.arch == "qwen3") {
            w.add_norm(blk + "attn_q_norm.weight", o.head_dim);
            w.add_norm(blk + "attn_k_norm.weight", o.head_dim);
        }
        w.add_matrix(blk + "attn_output.weight", o.type, n_q, o.embd);
        w.add_norm(blk + "ffn_norm.weight", o.embd);
        w.add_matrix(blk + "ffn_gate.weight", o.type, o.embd, o.ff);
        w.add_matrix(blk + "ffn_up.weight", o.type, o.embd, o.ff);
        w.add_matrix(blk + "ffn_down.weight", o.type, o.ff, o.embd);
    }
    w.add_norm("output_norm.weight", o.embd);
    w.add_matrix("output.weight", o.embd_type, o.embd, vocab);
    return w.tensors();
}

// ---- file ---------------------------------------------------------------------------------------------

void set_hparams(gguf_context* ctx, const Options& o, size_t n_vocab) {
    const std::string a = o.arch + ".";
    const bool qwen = o.arch != "llama";
    gguf_set_val_str(ctx, "general.architecture", o.arch.c_str());
    gguf_set_val_str(ctx, "general.name", ("tiny-" + o.arch).c_str());
    gguf_set_val_u32(ctx, "general.file_type",
                     o.type == GGML_TYPE_F32 ? LLAMA_FTYPE_ALL_F32 : LLAMA_FTYPE_MOSTLY_F16);
    gguf_set_val_u32(ctx, (a + "vocab_size").c_str(), static_cast<uint32_t>(n_vocab));
    gguf_set_val_u32(ctx, (a + "context_length").c_str(), o.ctx);
    gguf_set_val_u32(ctx, (a + "embedding_length").c_str(), o.embd);
    gguf_set_val_u32(ctx, (a + "block_count").c_str(), o.layers);
    gguf_set_val_u32(ctx, (a + "feed_forward_length").c_str(), o.ff);
    gguf_set_val_u32(ctx, (a + "attention.head_count").c_str(), o.heads);
    gguf_set_val_u32(ctx, (a + "attention.head_count_kv").c_str(), o.heads_kv);
    // Explicit because head_dim need not be embd / heads.
    gguf_set_val_u32(ctx, (a + "attention.key_length").c_str(), o.head_dim);
    gguf_set_val_u32(ctx, (a + "attention.value_length").c_str(), o.head_dim);
    gguf_set_val_u32(ctx, (a + "rope.dimension_count").c_str(), o.head_dim);
    // The real families' values.
    gguf_set_val_f32(ctx, (a + "rope.freq_base").c_str(), qwen ? 1000000.0f : 500000.0f);
    gguf_set_val_f32(ctx, (a + "attention.layer_norm_rms_epsilon").c_str(), qwen ? 1e-6f : 1e-5f);
}

void write_model(const Options& o, const std::string& path) {
    GgufPtr gguf(gguf_init_empty());

    size_t n_vocab = 0;
    bool llama3_headers = false;
    if (o.vocab.empty()) {
        n_vocab = write_builtin_tokenizer(gguf.get());
    } else {
        const VocabInfo info = copy_tokenizer(gguf.get(), o.vocab, o.arch);
        n_vocab = info.n_tokens;
        llama3_headers = info.has_llama3_headers;
    }
    const char* chat_template = o.arch == "qwen3"                       ? kQwen3Template
                                : (o.arch == "llama" && llama3_headers) ? kLlama3Template
                                                                        : kChatmlTemplate;
    gguf_set_val_str(gguf.get(), "tokenizer.chat_template", chat_template);
    set_hparams(gguf.get(), o, n_vocab);

    const std::vector<Tensor> tensors = make_weights(o, n_vocab);

    // The ggml context only describes the tensors; their data stays in `tensors` until the file is written.
    ggml_init_params params = {tensors.size() * ggml_tensor_overhead(), nullptr, /*no_alloc =*/true};
    GgmlPtr meta(ggml_init(params));
    if (!meta) throw std::runtime_error("ggml_init failed");
    for (const auto& t : tensors) {
        ggml_tensor* gt = ggml_new_tensor(meta.get(), t.type, static_cast<int>(t.ne.size()), t.ne.data());
        ggml_set_name(gt, t.name.c_str());
        gguf_add_tensor(gguf.get(), gt);
        gguf_set_tensor_data(gguf.get(), t.name.c_str(), t.bytes.data());
    }
    std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "wb"), std::fclose);
    if (!file) throw std::runtime_error("--out " + path + ": cannot create file: " + std::strerror(errno));
    if (!gguf_write_to_file_ptr(gguf.get(), file.get(), /*only_meta =*/false) ||
        std::fflush(file.get()) != 0) {
        throw std::runtime_error("--out " + path + ": write failed");
    }
}

void quantize_q8_0(const std::string& in, const std::string& out) {
    llama_model_quantize_params params = llama_model_quantize_default_params();
    params.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
    params.nthread = 1;  // tiny tensors: threads buy nothing
    if (llama_model_quantize(in.c_str(), out.c_str(), &params) != 0) {
        throw std::runtime_error("--out " + out + ": llama_model_quantize to q8_0 failed");
    }
}

void log_errors_only(ggml_log_level level, const char* text, void*) {
    if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

// Deletes a temporary file when it goes out of scope, whatever happened.
class TempFile {
public:
    explicit TempFile(std::string path) : path_(std::move(path)) {}
    ~TempFile() { std::remove(path_.c_str()); }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

int run(int argc, char** argv) {
    const Options o = parse_args(argc, argv);
    llama_log_set(log_errors_only, nullptr);
    llama_backend_init();

    // Write beside --out and rename at the end: an interrupted run never leaves a half-written model that
    // a build system would take for up to date.
    const TempFile tmp(o.out + ".tmp");
    if (o.quantize.empty()) {
        write_model(o, tmp.path());
    } else {
        const TempFile unquantized(o.out + ".unquantized.tmp");
        write_model(o, unquantized.path());
        quantize_q8_0(unquantized.path(), tmp.path());
    }
    std::error_code ec;
    std::filesystem::rename(tmp.path(), o.out, ec);
    if (ec) throw std::runtime_error("--out " + o.out + ": cannot write file (" + ec.message() + ")");

    llama_backend_free();
    return 0;
}

}  // namespace
}  // namespace kvlens

int main(int argc, char** argv) {
    try {
        return kvlens::run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "make-tiny-gguf: %s\n", e.what());
        return 1;
    }
}
