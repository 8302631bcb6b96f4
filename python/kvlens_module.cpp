// Python bindings (pybind11), the extension kvlens._kvlens under the package python/kvlens (whose Model
// adds chat / score / encode / kv in the ecosystem's names): the model, the OpenAI-compatible API of `kvlens
// serve` as plain function calls (request dict in, response dict out: the same JSON as over HTTP, with the
// KV-CoE scores and the routing), and the raw per-layer K/V of a text as numpy arrays. Computation runs
// without the GIL.
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

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <nlohmann/json.hpp>

#include "capture/dump.h"
#include "engine/batcher.h"
#include "engine/chat_template.h"
#include "engine/model.h"
#include "eval/coe_eval.h"
#include "eval/merge.h"
#include "eval/sample_eval.h"
#include "methods/coe.h"
#include "methods/embed.h"
#include "server/api.h"
#include "util/data_dir.h"
#include "util/error.h"

namespace py = pybind11;
using namespace py::literals;
using nlohmann::json;

namespace {

// Python objects <-> JSON through the json module: exactly the JSON the HTTP API speaks.
json to_json(const py::handle& o) {
    const std::string s = py::module_::import("json").attr("dumps")(o).cast<std::string>();
    return json::parse(s);
}

py::object from_json(const json& j) {
    return py::module_::import("json").attr("loads")(j.dump(-1, ' ', false, json::error_handler_t::replace));
}

kvlens::SessionParams session_params(int n_ctx, int threads, const std::string& flash_attn,
                                     const std::string& kv_source) {
    kvlens::SessionParams sp;
    sp.n_ctx = n_ctx;
    sp.n_threads = threads;
    if (flash_attn != "auto" && flash_attn != "on" && flash_attn != "off")
        throw kvlens::Error("flash_attn '" + flash_attn + "': expected auto, on or off");
    sp.flash_attn = flash_attn == "on"    ? kvlens::FlashAttn::On
                    : flash_attn == "off" ? kvlens::FlashAttn::Off
                                          : kvlens::FlashAttn::Auto;
    try {
        sp.capture_source = kvlens::parse_capture_source(kv_source);
    } catch (const kvlens::Error& e) {
        throw kvlens::Error(std::string("kv_source: ") + e.what());
    }
    return sp;
}

// The token-axis KV-CoE knobs (kv_coe_*), as the CLI's --coe-* flags; a bad value names its argument.
kvlens::TokenCoeSpec token_coe_spec(const std::string& layers, const std::string& kv_part,
                                    const std::string& positions, const std::string& head_agg) {
    auto knob = [](const char* name, auto parse) {
        try {
            return parse();
        } catch (const kvlens::Error& e) {
            throw kvlens::Error(std::string(name) + ": " + e.what());
        }
    };
    kvlens::TokenCoeSpec spec;
    knob("coe_layers", [&] { return kvlens::parse_layers(layers); });
    spec.layers = layers;
    spec.kv_part = knob("coe_kv_part", [&] { return kvlens::parse_kv_part(kv_part); });
    spec.positions = knob("coe_positions", [&] { return kvlens::parse_coe_positions(positions); });
    spec.head_agg = knob("coe_head_agg", [&] { return kvlens::parse_head_agg(head_agg); });
    return spec;
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
            for (const auto& s : setters) known += (known.empty() ? "" : ", ") + s.first;
            throw kvlens::Error(std::string(what) + ": unknown argument '" + k + "' (known: " + known + ")");
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
    m.attr("__version__") = KVLENS_VERSION;
    static py::exception<kvlens::Error> error(m, "Error", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const kvlens::ApiError& e) {  // a refused request: kvlens.Error with .param
            py::object inst = py::reinterpret_borrow<py::object>(error.ptr())(e.what());
            inst.attr("param") = e.param;
            PyErr_SetObject(error.ptr(), inst.ptr());
        } catch (const kvlens::Error& e) {
            PyErr_SetString(error.ptr(), e.what());
        }
    });

    py::class_<kvlens::Model>(m, "Model", "A GGUF model (weights loaded once, shared by every Api and call)")
        .def(py::init([](const std::string& path, int gpu_layers, bool verbose) {
                 kvlens::set_verbose(verbose);
                 return std::make_unique<kvlens::Model>(kvlens::ModelParams{path, gpu_layers});
             }),
             "path"_a, "gpu_layers"_a = -1, "verbose"_a = false)
        .def_property_readonly("path", &kvlens::Model::path)
        .def_property_readonly("info",
                               [](const kvlens::Model& mo) {
                                   const kvlens::ModelInfo& i = mo.info();
                                   return py::dict("arch"_a = i.arch, "name"_a = i.name,
                                                   "n_layer"_a = i.n_layer, "n_embd"_a = i.n_embd,
                                                   "n_head"_a = i.n_head, "n_head_kv"_a = i.n_head_kv,
                                                   "head_dim"_a = i.head_dim, "kv_width"_a = i.kv_width(),
                                                   "n_ctx_train"_a = i.n_ctx_train, "n_vocab"_a = i.n_vocab,
                                                   "chat_template"_a = i.chat_template);
                               })
        .def("tokenize", &kvlens::Model::tokenize, "text"_a, "add_special"_a = true, "parse_special"_a = true)
        .def("detokenize", &kvlens::Model::detokenize, "tokens"_a, "render_special"_a = false);

    py::class_<kvlens::Api>(m, "Api",
                            "The OpenAI-compatible API of `kvlens serve`, without HTTP: request dicts in, "
                            "response dicts out")
        .def(py::init([](const kvlens::Model& model, int n_ctx, int threads, int parallel, int max_tokens,
                         const std::string& chat_template, const std::string& router,
                         const std::string& calibration, const std::string& flash_attn,
                         const std::string& kv_source, const std::string& coe_layers,
                         const std::string& coe_kv_part, const std::string& coe_positions,
                         const std::string& coe_head_agg) {
                 kvlens::ApiParams p;
                 p.session = session_params(n_ctx, threads, flash_attn, kv_source);
                 p.token_coe = token_coe_spec(coe_layers, coe_kv_part, coe_positions, coe_head_agg);
                 p.parallel = parallel;
                 p.default_max_tokens = max_tokens;
                 p.chat_template = chat_template;
                 p.router_path = router;
                 p.calibration_path = calibration;
                 return std::make_unique<kvlens::Api>(model, p);
             }),
             "model"_a, "n_ctx"_a = 0, "threads"_a = 0, "parallel"_a = 1, "max_tokens"_a = 512,
             "chat_template"_a = "auto", "router"_a = "", "calibration"_a = "", "flash_attn"_a = "auto",
             "kv_source"_a = "graph", "coe_layers"_a = kvlens::TokenCoeSpec{}.layers,
             "coe_kv_part"_a = kvlens::to_string(kvlens::TokenCoeSpec{}.kv_part),
             "coe_positions"_a = kvlens::to_string(kvlens::TokenCoeSpec{}.positions),
             "coe_head_agg"_a = kvlens::to_string(kvlens::TokenCoeSpec{}.head_agg), py::keep_alive<1, 2>())
        .def("models", [](const kvlens::Api& a) { return from_json(a.models()); })
        .def(
            "chat",
            [](const kvlens::Api& a, const py::dict& request, const py::object& on_chunk) {
                const kvlens::ChatRequest r = a.parse_chat(to_json(request));
                json out;
                if (on_chunk.is_none()) {
                    py::gil_scoped_release nogil;
                    out = a.chat(r);
                } else {
                    // Streaming: on_chunk(chunk dict) for every chat.completion.chunk; return False to stop.
                    auto send = [&on_chunk](const json& j) {
                        py::gil_scoped_acquire gil;
                        const py::object keep = on_chunk(from_json(j));
                        return keep.is_none() || keep.cast<bool>();
                    };
                    py::gil_scoped_release nogil;
                    out = a.chat(r, send);
                }
                return from_json(out);
            },
            "request"_a, "on_chunk"_a = py::none(),
            "A chat completion: the request as for POST /v1/chat/completions (think: default|on|off|auto)")
        .def(
            "embeddings",
            [](const kvlens::Api& a, const py::dict& request) {
                const json body = to_json(request);
                json out;
                {
                    py::gil_scoped_release nogil;
                    out = a.embeddings(body);
                }
                return from_json(out);
            },
            "request"_a, "KV embeddings: the request as for POST /v1/embeddings");

    m.def(
        "kv",
        [](const kvlens::Model& model, const py::object& text_or_tokens, bool hidden, bool add_special,
           int threads, const std::string& flash_attn, const std::string& kv_source) {
            std::vector<llama_token> toks;
            if (py::isinstance<py::str>(text_or_tokens))
                toks = model.tokenize(text_or_tokens.cast<std::string>(), add_special, true);
            else
                toks = text_or_tokens.cast<std::vector<llama_token>>();
            kvlens::KvDump d;
            {
                py::gil_scoped_release nogil;
                kvlens::SessionParams sp =
                    session_params((int)toks.size() + 8, threads, flash_attn, kv_source);
                sp.n_batch = std::max(1, (int)toks.size());
                kvlens::Session session(model, sp);
                d = kvlens::dump_kv(session, toks, hidden);
            }
            py::dict out("tokens"_a = toks, "k"_a = array3(d.k, d.n_layer, d.n_tokens, d.kv_width),
                         "v"_a = array3(d.v, d.n_layer, d.n_tokens, d.kv_width));
            if (hidden) out["hidden"] = array3(d.hidden, d.n_layer + 1, d.n_tokens, d.n_embd);
            return out;
        },
        "model"_a, "text"_a, "hidden"_a = false, "add_special"_a = true, "threads"_a = 0,
        "flash_attn"_a = "auto", "kv_source"_a = "graph",
        "Per-layer K (post-RoPE) and V of every token of a text (or token ids), one forward pass: arrays "
        "[layer, token, n_head_kv * head_dim]; with hidden, the residual stream [layer + 1, token, n_embd]");

    m.def(
        "encode",
        [](const kvlens::Model& model, const std::vector<std::string>& texts, bool normalize,
           const std::string& layers, const std::string& kv_part, const std::string& head_agg,
           const std::string& pos_agg, int batch_size, int n_ctx, int threads,
           const std::string& flash_attn) {
            kvlens::EmbedParams ep;
            ep.spec.normalize = normalize;
            ep.spec.kv_part = kvlens::parse_kv_part(kv_part);
            ep.spec.head_agg = kvlens::parse_head_agg(head_agg);
            ep.spec.pos_agg = kvlens::parse_pos_agg(pos_agg);
            if (layers.empty()) {  // the server's: the last 4 layers, or all of a smaller model
                ep.spec.layers.clear();
                for (int l = -std::min(4, model.info().n_layer); l < 0; ++l) ep.spec.layers.push_back(l);
            } else {
                ep.spec.layers = kvlens::parse_layers(layers);
            }
            if (batch_size < 1) throw kvlens::Error("batch_size must be >= 1");
            ep.batch_seqs = batch_size;
            for (size_t i = 0; i < texts.size(); ++i) {
                const std::string problem = kvlens::text_problem(texts[i]);
                if (!problem.empty())
                    throw kvlens::ApiError(400, "texts[" + std::to_string(i) + "]", problem);
            }
            std::vector<kvlens::Embedding> out;
            int width = 0;
            {
                py::gil_scoped_release nogil;
                kvlens::SessionParams sp = session_params(n_ctx, threads, flash_attn, "graph");
                sp.n_seq_max = batch_size;
                kvlens::Session session(model, sp);
                kvlens::Embedder embedder(session, ep);
                width = embedder.kv_width();
                out = embedder.embed(texts);
            }
            py::array_t<float> arr({(py::ssize_t)texts.size(), (py::ssize_t)width});
            float* dst = arr.mutable_data();
            for (size_t i = 0; i < out.size(); ++i) {
                if (!out[i].ok) throw kvlens::ApiError(400, "texts[" + std::to_string(i) + "]", out[i].error);
                std::copy(out[i].kv.begin(), out[i].kv.end(), dst + i * width);
            }
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
        [](const kvlens::Model& model, const std::vector<std::map<std::string, std::string>>& messages,
           const std::string& answer, const std::string& think, const std::string& chat_template,
           bool end_of_turn, int threads, const std::string& flash_attn, const std::string& kv_source,
           const std::string& coe_layers, const std::string& coe_kv_part, const std::string& coe_positions,
           const std::string& coe_head_agg) {
            const kvlens::TokenCoeSpec spec =
                token_coe_spec(coe_layers, coe_kv_part, coe_positions, coe_head_agg);
            const kvlens::ModelInfo& mi = model.info();
            const kvlens::ChatTemplate flag = kvlens::parse_chat_template(chat_template);
            const kvlens::ChatTemplate t = flag == kvlens::ChatTemplate::Auto
                                               ? kvlens::detect_chat_template(mi.chat_template, mi.arch)
                                               : flag;
            std::vector<kvlens::ChatMessage> msgs;
            for (size_t i = 0; i < messages.size(); ++i) {
                const auto role = messages[i].find("role"), content = messages[i].find("content");
                if (role == messages[i].end() || content == messages[i].end())
                    throw kvlens::ApiError(400, "messages[" + std::to_string(i) + "]",
                                           "expected a dict with role and content");
                msgs.push_back({role->second, content->second});
            }
            if (msgs.empty()) throw kvlens::ApiError(400, "messages", "no messages");
            const std::string prompt_text =
                kvlens::render_chat(t, msgs, true, kvlens::parse_think_mode(think));
            const std::vector<llama_token> prompt = model.tokenize(prompt_text, true, true);
            // The answer as the model would have produced it after the prompt, closed by the template's
            // end-of-turn token as a generation that stops by itself is (that token is scored too).
            std::vector<llama_token> forced = model.tokenize(answer, false, true);
            if (end_of_turn)
                for (const std::string& eot : kvlens::end_of_turn_texts(t)) {
                    const std::vector<llama_token> e = model.tokenize(eot, false, true);
                    if (e.size() == 1 && model.is_eog(e[0])) {
                        forced.push_back(e[0]);
                        break;
                    }
                }
            if (forced.empty()) throw kvlens::ApiError(400, "answer", "empty answer");
            kvlens::Generation g;
            std::map<std::string, double> scores;
            {
                py::gil_scoped_release nogil;
                kvlens::SessionParams sp = session_params(0, threads, flash_attn, kv_source);
                sp.n_ctx = (int)(prompt.size() + forced.size()) + 8;
                sp.n_batch = std::min(sp.n_ctx, 512);
                kvlens::Session session(model, sp);
                kvlens::CoeScorer scorer(session, 0, (int)prompt.size(), spec);
                kvlens::Batcher batcher(session, false);
                batcher.join(0, prompt, (int)forced.size(), kvlens::make_sampler({}, 0), {}, forced);
                while (!batcher.empty())
                    for (kvlens::Generation& done : batcher.step()) g = std::move(done);
                scores = scorer.result(g.steps).named();
            }
            py::dict sc;
            for (const auto& [k, v] : scores)
                sc[py::str(k)] = std::isfinite(v) ? py::object(py::float_(v)) : py::none();
            return py::dict("scores"_a = sc, "n_prompt"_a = prompt.size(), "tokens"_a = g.output,
                            "stop"_a = kvlens::to_string(g.stop));
        },
        "model"_a, "messages"_a, "answer"_a, "think"_a = "default", "chat_template"_a = "auto",
        "end_of_turn"_a = true, "threads"_a = 0, "flash_attn"_a = "auto", "kv_source"_a = "graph",
        "coe_layers"_a = kvlens::TokenCoeSpec{}.layers,
        "coe_kv_part"_a = kvlens::to_string(kvlens::TokenCoeSpec{}.kv_part),
        "coe_positions"_a = kvlens::to_string(kvlens::TokenCoeSpec{}.positions),
        "coe_head_agg"_a = kvlens::to_string(kvlens::TokenCoeSpec{}.head_agg),
        "The scores of a given answer (teacher forcing: its tokens decoded after the chat prompt as if "
        "generated, with the same capture and step statistics): {scores, n_prompt, tokens, stop}");

    // The evaluation entry points (kvlens eval coe / eval sample / eval merge) for kvlens.ray: keyword
    // arguments named as the CLI's flags (dashes as underscores; model, out, ctx, threads, template, n,
    // temp).
    m.def(
        "run_coe_eval",
        [](const py::kwargs& kw) {
            kvlens::CoeEvalParams p;
            p.data_dir = kvlens::find_data_dir();
            p.command_line = "kvlens eval coe";
            std::string layers = p.token_coe.layers, kv_part = kvlens::to_string(p.token_coe.kv_part),
                        positions = kvlens::to_string(p.token_coe.positions),
                        head_agg = kvlens::to_string(p.token_coe.head_agg);
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
                          {"template", set(p.chat_template)},
                          {"think", set(p.think)},
                          {"coe_layers", set(layers)},
                          {"coe_kv_part", set(kv_part)},
                          {"coe_positions", set(positions)},
                          {"coe_head_agg", set(head_agg)},
                          {"bootstrap", set(p.bootstrap)},
                          {"seed", set(p.seed)},
                          {"dev_fraction", set(p.dev_fraction)},
                          {"command_line", set(p.command_line)}},
                         "run_coe_eval");
            p.token_coe = token_coe_spec(layers, kv_part, positions, head_agg);
            py::gil_scoped_release nogil;
            kvlens::run_coe_eval(p);
        },
        "kvlens eval coe (model=, dataset=, out=, limit=, shard='I/N', ... as the CLI's flags): runs or "
        "resumes the evaluation in out and writes its report");
    m.def(
        "run_sample_eval",
        [](const py::kwargs& kw) {
            kvlens::SampleEvalParams p;
            p.data_dir = kvlens::find_data_dir();
            p.command_line = "kvlens eval sample";
            std::string layers = p.token_coe.layers, kv_part = kvlens::to_string(p.token_coe.kv_part),
                        positions = kvlens::to_string(p.token_coe.positions),
                        head_agg = kvlens::to_string(p.token_coe.head_agg);
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
                          {"coe_layers", set(layers)},
                          {"coe_kv_part", set(kv_part)},
                          {"coe_positions", set(positions)},
                          {"coe_head_agg", set(head_agg)},
                          {"command_line", set(p.command_line)}},
                         "run_sample_eval");
            if (p.part != "all" && p.part != "dev" && p.part != "test")
                throw kvlens::Error("part '" + p.part + "': expected all, dev or test");
            p.token_coe = token_coe_spec(layers, kv_part, positions, head_agg);
            py::gil_scoped_release nogil;
            kvlens::run_sample_eval(p);
        },
        "kvlens eval sample (model=, dataset=, out=, limit=, shard='I/N', n=[1, 4, 8], ... as the CLI's "
        "flags): runs or resumes the evaluation in out and writes its report");
    m.def(
        "eval_merge",
        [](const std::vector<std::string>& dirs, const std::string& out, const std::string& command_line) {
            kvlens::MergeParams p{dirs, out, command_line};
            py::gil_scoped_release nogil;
            kvlens::run_eval_merge(p);
        },
        "dirs"_a, "out"_a, "command_line"_a = "kvlens eval merge",
        "kvlens eval merge: joins the output directories of one run's shards into out (new or empty), "
        "refusing shards that do not make up one run (nothing written then)");

    m.def(
        "data_dir", [] { return kvlens::find_data_dir(); },
        "Where the built-in dataset configs are: KVLENS_DATA_DIR, else those installed beside this module, "
        "else the source tree it was built from");
}
