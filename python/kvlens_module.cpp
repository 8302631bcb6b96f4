// Python bindings (pybind11), the extension kvlens._kvlens under the package python/kvlens (whose Model
// adds chat / score / encode / kv in the ecosystem's names): the model, the OpenAI-compatible API of `kvlens
// serve` as plain function calls (request dict in, response dict out: the same JSON as over HTTP, with the
// KV-CoE scores and the routing), and the raw per-layer K/V of a text as numpy arrays. Computation runs
// without the GIL. Everything goes through the public API (kvlens/kvlens.h), as any program's would.
//
//   from kvlens import _kvlens as kvlens
//   m = kvlens.Model("model.gguf")
//   api = kvlens.Api(m, router="router.json")
//   r = api.chat({"messages": [{"role": "user", "content": "What is 2+3?"}], "temperature": 0})
//   r["choices"][0]["message"]["content"], r["kvlens"]["scores"]["kv_coe_r"]
//   kv = kvlens.kv(m, "some text")          # {"k": [layer, token, width], "v": ..., "tokens": ...}
#include <cmath>
#include <functional>
#include <map>
#include <stdexcept>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "kvlens/kvlens.h"

namespace py = pybind11;
using namespace py::literals;

namespace {

// What the module raises as kvlens.Error (a ValueError); a refused request names its parameter (.param).
struct BindingError : std::runtime_error {
    explicit BindingError(const std::string& message, const std::string& param_ = "", bool has_param_ = false)
        : std::runtime_error(message), param(param_), has_param(has_param_) {}
    std::string param;
    bool has_param;
};

// A failed public API call with its message.
void check(kvlens_status s) {
    if (s != KVLENS_OK) throw BindingError(kvlens_last_error());
}

// A failed call whose message may start with the name of the argument at fault ("texts[1]: ..."): raised
// with that name as .param and the rest as the message, as a refused request is.
void check_param(kvlens_status s, const std::string& prefix) {
    if (s == KVLENS_OK) return;
    const std::string m = kvlens_last_error();
    const size_t colon = m.find(": ");
    if (s == KVLENS_ERR_INVALID_ARGUMENT && colon != std::string::npos &&
        m.compare(0, prefix.size(), prefix) == 0)
        throw BindingError(m.substr(colon + 2), m.substr(0, colon), true);
    throw BindingError(m);
}

// A failed call whose message starts with one of `fields` ("kv_part: ..."): raised without it, as the
// bindings said it before they went through the public API.
void check_unprefixed(kvlens_status s, std::initializer_list<const char*> fields) {
    if (s == KVLENS_OK) return;
    const std::string m = kvlens_last_error();
    for (const char* f : fields) {
        const std::string prefix = std::string(f) + ": ";
        if (m.rfind(prefix, 0) == 0) throw BindingError(m.substr(prefix.size()));
    }
}

// A refused or failed request of the service: a refusal (4xx, 503) names its parameter.
void check_request(kvlens_status s, const kvlens_request_error& e) {
    if (s == KVLENS_OK) return;
    if (e.http_status >= 500 && e.http_status != 503) throw BindingError(e.message);
    throw BindingError(e.message, e.param, true);
}

struct Model {
    kvlens_model_ptr m;
};
struct Api {
    kvlens_service_ptr s;
};

std::string json_dumps(const py::handle& o) {
    return py::module_::import("json").attr("dumps")(o).cast<std::string>();
}
py::object json_loads(const std::string& s) {
    return py::module_::import("json").attr("loads")(s);
}

kvlens_flash_attn flash_attn_of(const std::string& flash_attn) {
    if (flash_attn != "auto" && flash_attn != "on" && flash_attn != "off")
        throw BindingError("flash_attn '" + flash_attn + "': expected auto, on or off");
    return flash_attn == "on"    ? KVLENS_FLASH_ATTN_ON
           : flash_attn == "off" ? KVLENS_FLASH_ATTN_OFF
                                 : KVLENS_FLASH_ATTN_AUTO;
}

kvlens_session_params session_params(int n_ctx, int threads, const std::string& flash_attn,
                                     const std::string& kv_source) {
    kvlens_session_params sp = kvlens_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = threads;
    sp.flash_attn = flash_attn_of(flash_attn);
    if (kv_source != "graph" && kv_source != "cache")
        throw BindingError("kv_source: K/V source '" + kv_source + "': expected graph or cache");
    sp.kv_source = kv_source == "cache" ? KVLENS_KV_SOURCE_CACHE : KVLENS_KV_SOURCE_GRAPH;
    return sp;
}

kvlens_session_ptr open_session(const Model& model, const kvlens_session_params& sp) {
    kvlens_session* s = nullptr;
    check(kvlens_session_open(model.m.get(), sp, &s));
    return kvlens_session_ptr(s);
}

kvlens_think think_of(const std::string& think) {
    if (think == "on") return KVLENS_THINK_ON;
    if (think == "off") return KVLENS_THINK_OFF;
    if (think == "default") return KVLENS_THINK_DEFAULT;
    throw BindingError("think mode '" + think + "': unknown (known: on, off, default)");
}

// Keyword arguments onto the fields of a params struct (the eval entry points): each setter takes its key's
// value; an unknown key is refused with the known ones.
using Setters = std::map<std::string, std::function<void(const py::handle&)>>;
void apply_kwargs(const py::kwargs& kw, const Setters& setters, const char* what) {
    for (const auto& [key, value] : kw) {
        const std::string k = key.cast<std::string>();
        const auto it = setters.find(k);
        if (it == setters.end()) {
            std::string known;
            for (const auto& st : setters) known += (known.empty() ? "" : ", ") + st.first;
            throw BindingError(std::string(what) + ": unknown argument '" + k + "' (known: " + known + ")");
        }
        it->second(value);
    }
}
template <typename T>
std::function<void(const py::handle&)> set(T& field) {
    return [&field](const py::handle& v) { field = v.cast<T>(); };
}

py::array_t<float> array3(const std::vector<float>& v, int a, int b, int c) {
    py::array_t<float> out({a, b, c});
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

}  // namespace

PYBIND11_MODULE(_kvlens, m) {
    m.doc() =
        "kvlens: the KV cache of an LLM as a free representation (KV-CoE, fast/slow thinking, embeddings)";
    m.attr("__version__") = kvlens_version();
    static py::exception<BindingError> error(m, "Error", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const BindingError& e) {
            if (!e.has_param) {
                PyErr_SetString(error.ptr(), e.what());
                return;
            }
            py::object inst = py::reinterpret_borrow<py::object>(error.ptr())(e.what());
            inst.attr("param") = e.param;  // a refused request: kvlens.Error with .param
            PyErr_SetObject(error.ptr(), inst.ptr());
        }
    });
    const kvlens_session_params defaults = kvlens_session_default_params();

    py::class_<Model>(m, "Model", "A GGUF model (weights loaded once, shared by every Api and call)")
        .def(py::init([](const std::string& path, int gpu_layers, bool verbose, bool batch_invariant) {
                 kvlens_model_params mp = kvlens_model_default_params();
                 mp.n_gpu_layers = gpu_layers;
                 mp.verbose = verbose;
                 mp.batch_invariant = batch_invariant;
                 kvlens_model* mo = nullptr;
                 check(kvlens_model_load(path, mp, &mo));
                 return Model{kvlens_model_ptr(mo)};
             }),
             "path"_a, "gpu_layers"_a = -1, "verbose"_a = false, "batch_invariant"_a = false)
        .def_property_readonly("path",
                               [](const Model& mo) {
                                   kvlens_model_info i;
                                   check(kvlens_model_get_info(mo.m.get(), &i));
                                   return i.path;
                               })
        .def_property_readonly("info",
                               [](const Model& mo) {
                                   kvlens_model_info i;
                                   check(kvlens_model_get_info(mo.m.get(), &i));
                                   return py::dict("arch"_a = i.arch, "name"_a = i.name,
                                                   "n_layer"_a = i.n_layer, "n_embd"_a = i.n_embd,
                                                   "n_head"_a = i.n_head, "n_head_kv"_a = i.n_head_kv,
                                                   "head_dim"_a = i.head_dim, "kv_width"_a = i.kv_width,
                                                   "n_ctx_train"_a = i.n_ctx_train, "n_vocab"_a = i.n_vocab,
                                                   "chat_template"_a = i.gguf_chat_template);
                               })
        .def(
            "tokenize",
            [](const Model& mo, const std::string& text, bool add_special, bool parse_special) {
                std::vector<int32_t> out;
                check(kvlens_tokenize(mo.m.get(), text, add_special, &out, parse_special));
                return out;
            },
            "text"_a, "add_special"_a = true, "parse_special"_a = true)
        .def(
            "detokenize",
            [](const Model& mo, const std::vector<int32_t>& tokens, bool render_special) {
                std::string out;
                check(kvlens_detokenize(mo.m.get(), tokens, render_special, &out));
                return out;
            },
            "tokens"_a, "render_special"_a = false);

    py::class_<Api>(
        m, "Api",
        "The OpenAI-compatible API of `kvlens serve`, without HTTP: request dicts in, response dicts "
        "out")
        .def(py::init([](const Model& model, int n_ctx, int threads, int parallel, int max_tokens,
                         const std::string& chat_template, const std::string& router,
                         const std::string& calibration, const std::string& flash_attn,
                         const std::string& kv_source, const std::string& coe_layers,
                         const std::string& coe_kv_part, const std::string& coe_positions,
                         const std::string& coe_head_agg, bool batch_invariant) {
                 kvlens_service_params p = kvlens_service_default_params();
                 p.session = session_params(n_ctx, threads, flash_attn, kv_source);
                 p.session.batch_invariant = batch_invariant;
                 p.session.coe_layers = coe_layers;
                 p.session.coe_kv_part = coe_kv_part;
                 p.session.coe_positions = coe_positions;
                 p.session.coe_head_agg = coe_head_agg;
                 p.session.chat_template = chat_template;
                 p.session.router_path = router;
                 p.session.calibration_path = calibration;
                 p.parallel = parallel;
                 p.default_max_tokens = max_tokens;
                 kvlens_service* svc = nullptr;
                 check(kvlens_service_open(model.m.get(), p, &svc));
                 return Api{kvlens_service_ptr(svc)};
             }),
             "model"_a, "n_ctx"_a = 0, "threads"_a = 0, "parallel"_a = 1, "max_tokens"_a = 512,
             "chat_template"_a = "auto", "router"_a = "", "calibration"_a = "", "flash_attn"_a = "auto",
             "kv_source"_a = "cache", "coe_layers"_a = defaults.coe_layers,
             "coe_kv_part"_a = defaults.coe_kv_part, "coe_positions"_a = defaults.coe_positions,
             "coe_head_agg"_a = defaults.coe_head_agg, "batch_invariant"_a = false, py::keep_alive<1, 2>())
        .def("models",
             [](const Api& a) {
                 std::string out;
                 check(kvlens_service_models(a.s.get(), &out));
                 return json_loads(out);
             })
        .def(
            "chat",
            [](const Api& a, const py::dict& request, const py::object& on_chunk) {
                kvlens_request_error err;
                kvlens_chat_request* parsed = nullptr;
                check_request(kvlens_service_parse_chat(a.s.get(), json_dumps(request), &parsed, &err), err);
                const kvlens_chat_request_ptr r(parsed);
                std::string out;
                kvlens_status st;
                if (on_chunk.is_none()) {
                    py::gil_scoped_release nogil;
                    st = kvlens_service_chat(a.s.get(), r.get(), {}, &out, &err);
                } else {
                    // Streaming: on_chunk(chunk dict) for every chat.completion.chunk; return False to stop.
                    auto send = [&on_chunk](const std::string& j) {
                        py::gil_scoped_acquire gil;
                        const py::object keep = on_chunk(json_loads(j));
                        return keep.is_none() || keep.cast<bool>();
                    };
                    py::gil_scoped_release nogil;
                    st = kvlens_service_chat(a.s.get(), r.get(), send, &out, &err);
                }
                check_request(st, err);
                return out.empty() ? py::object(py::none()) : json_loads(out);
            },
            "request"_a, "on_chunk"_a = py::none(),
            "A chat completion: the request as for POST /v1/chat/completions (think: "
            "default|on|off|auto|budget:N|deer[:T])")
        .def(
            "embeddings",
            [](const Api& a, const py::dict& request) {
                const std::string body = json_dumps(request);
                kvlens_request_error err;
                std::string out;
                kvlens_status st;
                {
                    py::gil_scoped_release nogil;
                    st = kvlens_service_embeddings(a.s.get(), body, &out, &err);
                }
                check_request(st, err);
                return json_loads(out);
            },
            "request"_a, "KV embeddings: the request as for POST /v1/embeddings");

    m.def(
        "kv",
        [](const Model& model, const py::object& text_or_tokens, bool hidden, bool add_special, int threads,
           const std::string& flash_attn, const std::string& kv_source) {
            std::vector<int32_t> toks;
            if (py::isinstance<py::str>(text_or_tokens))
                check(kvlens_tokenize(model.m.get(), text_or_tokens.cast<std::string>(), add_special, &toks));
            else
                toks = text_or_tokens.cast<std::vector<int32_t>>();
            kvlens_session_params sp = session_params((int)toks.size() + 8, threads, flash_attn, kv_source);
            sp.n_batch = std::max(1, (int)toks.size());
            kvlens_kv d;
            {
                py::gil_scoped_release nogil;
                const kvlens_session_ptr session = open_session(model, sp);
                check(kvlens_kv_of_tokens(session.get(), toks, hidden, &d));
            }
            py::dict out("tokens"_a = toks, "k"_a = array3(d.k, d.n_layer, d.n_tokens, d.kv_width),
                         "v"_a = array3(d.v, d.n_layer, d.n_tokens, d.kv_width));
            if (hidden) out["hidden"] = array3(d.hidden, d.n_layer + 1, d.n_tokens, d.n_embd);
            return out;
        },
        "model"_a, "text"_a, "hidden"_a = false, "add_special"_a = true, "threads"_a = 0,
        "flash_attn"_a = "auto", "kv_source"_a = "cache",
        "Per-layer K (post-RoPE) and V of every token of a text (or token ids), one forward pass: arrays "
        "[layer, token, n_head_kv * head_dim]; with hidden, the residual stream [layer + 1, token, n_embd]");

    m.def(
        "encode",
        [](const Model& model, const std::vector<std::string>& texts, bool normalize,
           const std::string& layers, const std::string& kv_part, const std::string& head_agg,
           const std::string& pos_agg, int batch_size, int n_ctx, int threads,
           const std::string& flash_attn) {
            kvlens_embed_params ep = kvlens_embed_default_params();
            ep.normalize = normalize;
            ep.layers = layers;  // "": the server's: the last 4 layers, or all of a smaller model
            ep.kv_part = kv_part;
            ep.head_agg = head_agg;
            ep.pos_agg = pos_agg;
            if (batch_size < 1) throw BindingError("batch_size must be >= 1");
            kvlens_session_params sp = session_params(n_ctx, threads, flash_attn, "cache");
            sp.n_seq_max = batch_size;
            kvlens_embeddings e;
            kvlens_status st;
            {
                py::gil_scoped_release nogil;
                const kvlens_session_ptr session = open_session(model, sp);
                st = kvlens_embed(session.get(), texts, ep, &e);
            }
            // A pooling argument's message as the pooling says it; a bad text names texts[i] (.param).
            check_unprefixed(st, {"layers", "kv_part", "head_agg", "pos_agg"});
            check_param(st, "texts[");
            py::array_t<float> arr({(py::ssize_t)e.n, (py::ssize_t)e.width});
            std::copy(e.data.begin(), e.data.end(), arr.mutable_data());
            return arr;
        },
        "model"_a, "texts"_a, "normalize"_a = false, "layers"_a = "", "kv_part"_a = "kv_cat",
        "head_agg"_a = "mean", "pos_agg"_a = "mean", "batch_size"_a = 8, "n_ctx"_a = 4096, "threads"_a = 0,
        "flash_attn"_a = "auto",
        "KV embeddings of texts, one forward pass each: [len(texts), width] float32, the pooled K;V rows "
        "(tokens averaged, BOS excluded; heads and the selected layers averaged), L2-normalised with "
        "normalize");

    m.def(
        "score_answer",
        [](const Model& model, const std::vector<std::map<std::string, std::string>>& messages,
           const std::string& answer, const std::string& think, const std::string& chat_template,
           bool end_of_turn, int threads, const std::string& flash_attn, const std::string& kv_source,
           const std::string& coe_layers, const std::string& coe_kv_part, const std::string& coe_positions,
           const std::string& coe_head_agg) {
            std::vector<kvlens_chat_message> msgs;
            for (size_t i = 0; i < messages.size(); ++i) {
                const auto role = messages[i].find("role"), content = messages[i].find("content");
                if (role == messages[i].end() || content == messages[i].end())
                    throw BindingError("expected a dict with role and content",
                                       "messages[" + std::to_string(i) + "]", true);
                msgs.push_back({role->second, content->second});
            }
            if (msgs.empty()) throw BindingError("no messages", "messages", true);
            kvlens_score_params params = kvlens_score_default_params();
            params.think = think_of(think);
            params.end_of_turn = end_of_turn;
            // A context for the prompt and the answer (+ its end-of-turn token) and no more.
            std::string prompt_text;
            const kvlens_status rendered =
                kvlens_chat_render(model.m.get(), chat_template, msgs, params.think, true, &prompt_text);
            check_unprefixed(rendered, {"chat_template"});
            check(rendered);
            std::vector<int32_t> prompt, forced;
            check(kvlens_tokenize(model.m.get(), prompt_text, true, &prompt));
            check(kvlens_tokenize(model.m.get(), answer, false, &forced));
            kvlens_session_params sp = session_params(0, threads, flash_attn, kv_source);
            sp.n_ctx = (int)(prompt.size() + forced.size()) + (end_of_turn ? 1 : 0) + 8;
            sp.n_batch = std::min(sp.n_ctx, 512);
            sp.chat_template = chat_template;
            sp.coe_layers = coe_layers;
            sp.coe_kv_part = coe_kv_part;
            sp.coe_positions = coe_positions;
            sp.coe_head_agg = coe_head_agg;
            kvlens_answer_scores r;
            kvlens_status st;
            {
                py::gil_scoped_release nogil;
                const kvlens_session_ptr session = open_session(model, sp);
                st = kvlens_score_answer(session.get(), msgs, answer, params, &r);
            }
            check_param(st, "answer: ");
            py::dict sc;
            for (const auto& [k, v] : r.scores)
                sc[py::str(k)] = std::isfinite(v) ? py::object(py::float_(v)) : py::none();
            return py::dict("scores"_a = sc, "n_prompt"_a = r.n_prompt, "tokens"_a = r.tokens,
                            "stop"_a = r.stop);
        },
        "model"_a, "messages"_a, "answer"_a, "think"_a = "default", "chat_template"_a = "auto",
        "end_of_turn"_a = true, "threads"_a = 0, "flash_attn"_a = "auto", "kv_source"_a = "cache",
        "coe_layers"_a = defaults.coe_layers, "coe_kv_part"_a = defaults.coe_kv_part,
        "coe_positions"_a = defaults.coe_positions, "coe_head_agg"_a = defaults.coe_head_agg,
        "The scores of a given answer (teacher forcing: its tokens decoded after the chat prompt as if "
        "generated, with the same capture and step statistics): {scores, n_prompt, tokens, stop}");

    // The evaluation entry points (kvlens eval coe / eval sample / eval merge) for kvlens.ray: keyword
    // arguments named as the CLI's flags (dashes as underscores; model, out, ctx, threads, template, n,
    // temp).
    m.def(
        "run_coe_eval",
        [](const py::kwargs& kw) {
            kvlens_eval_coe_params p = kvlens_eval_coe_default_params();
            apply_kwargs(kw,
                         {{"model", set(p.model_path)},
                          {"dataset", set(p.dataset)},
                          {"data_dir", set(p.data_dir)},
                          {"out", set(p.out_dir)},
                          {"limit", set(p.limit)},
                          {"shard", set(p.shard)},
                          {"max_tokens", set(p.max_tokens)},
                          {"parallel", set(p.parallel)},
                          {"ctx", set(p.n_ctx)},
                          {"threads", set(p.n_threads)},
                          {"kv_source", set(p.kv_source)},
                          {"batch_invariant", set(p.batch_invariant)},
                          {"template", set(p.chat_template)},
                          {"think", set(p.think)},
                          {"coe_layers", set(p.coe_layers)},
                          {"coe_kv_part", set(p.coe_kv_part)},
                          {"coe_positions", set(p.coe_positions)},
                          {"coe_head_agg", set(p.coe_head_agg)},
                          {"bootstrap", set(p.bootstrap)},
                          {"seed", set(p.seed)},
                          {"dev_fraction", set(p.dev_fraction)},
                          {"rescore", set(p.rescore)},
                          {"recompute_scores", set(p.recompute_scores)},
                          {"command_line", set(p.command_line)}},
                         "run_coe_eval");
            kvlens_status st;
            {
                py::gil_scoped_release nogil;
                st = kvlens_eval_coe(p);
            }
            check(st);
        },
        "kvlens eval coe (model=, dataset=, out=, limit=, shard='I/N', ... as the CLI's flags): runs or "
        "resumes the evaluation in out and writes its report");
    m.def(
        "run_sample_eval",
        [](const py::kwargs& kw) {
            kvlens_eval_sample_params p = kvlens_eval_sample_default_params();
            apply_kwargs(kw,
                         {{"model", set(p.model_path)},
                          {"dataset", set(p.dataset)},
                          {"data_dir", set(p.data_dir)},
                          {"out", set(p.out_dir)},
                          {"limit", set(p.limit)},
                          {"shard", set(p.shard)},
                          {"part", set(p.part)},
                          {"dev_fraction", set(p.dev_fraction)},
                          {"max_tokens", set(p.max_tokens)},
                          {"n", set(p.ns)},
                          {"temp", set(p.temperature)},
                          {"top_k", set(p.top_k)},
                          {"top_p", set(p.top_p)},
                          {"seed", set(p.seed)},
                          {"scores", set(p.scores)},
                          {"calibration", set(p.calibration)},
                          {"ctx", set(p.n_ctx)},
                          {"threads", set(p.n_threads)},
                          {"kv_source", set(p.kv_source)},
                          {"template", set(p.chat_template)},
                          {"think", set(p.think)},
                          {"coe_layers", set(p.coe_layers)},
                          {"coe_kv_part", set(p.coe_kv_part)},
                          {"coe_positions", set(p.coe_positions)},
                          {"coe_head_agg", set(p.coe_head_agg)},
                          {"rescore", set(p.rescore)},
                          {"command_line", set(p.command_line)}},
                         "run_sample_eval");
            kvlens_status st;
            {
                py::gil_scoped_release nogil;
                st = kvlens_eval_sample(p);
            }
            check(st);
        },
        "kvlens eval sample (model=, dataset=, out=, limit=, shard='I/N', n=[1, 4, 8], ... as the CLI's "
        "flags): runs or resumes the evaluation in out and writes its report");
    m.def(
        "eval_merge",
        [](const std::vector<std::string>& dirs, const std::string& out, const std::string& command_line) {
            kvlens_status st;
            {
                py::gil_scoped_release nogil;
                st = kvlens_eval_merge(dirs, out, command_line);
            }
            check(st);
        },
        "dirs"_a, "out"_a, "command_line"_a = "kvlens eval merge",
        "kvlens eval merge: joins the output directories of one run's shards into out (new or empty), "
        "refusing shards that do not make up one run (nothing written then)");

    m.def("data_dir", &kvlens_data_dir,
          "Where the built-in dataset configs are: KVLENS_DATA_DIR, else those installed beside this module, "
          "else the source tree it was built from");
}
