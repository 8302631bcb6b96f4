// Test-only: fits kvlens's logistic probe on JSON from stdin and prints its results as JSON, for the
// scikit-learn comparison in tests/python/test_probe_reference.py.
// In:  {"x_train": [[..]], "y_train": [..], "x_test": [[..]], "n_classes": K, "C": 1.0, "standardize": true,
//       "f1_true": [..], "f1_pred": [..]}   (the f1_* pair is optional)
// Out: {"proba": [[..]], "pred": [..], "iterations": n, "converged": b, "macro_f1": f}
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "eval/probe.h"
#include "util/error.h"

using nlohmann::json;

static kvlens::Matrix to_matrix(const json& j) {
    kvlens::Matrix m;
    m.rows = (int)j.size();
    m.cols = m.rows ? (int)j[0].size() : 0;
    for (const json& r : j)
        for (const json& v : r) m.data.push_back(v.get<float>());
    return m;
}

int main() {
    try {
        const json in = json::parse(std::cin);
        json out;
        if (in.contains("x_train")) {
            kvlens::ProbeParams pp;
            pp.C = in.value("C", 1.0);
            pp.standardize = in.value("standardize", true);
            pp.tol = in.value("tol", 1e-10);
            pp.max_iter = in.value("max_iter", 10000);
            kvlens::LogisticProbe probe;
            probe.fit(to_matrix(in["x_train"]), in["y_train"].get<std::vector<int>>(),
                      in["n_classes"].get<int>(), pp);
            const kvlens::Matrix xt = to_matrix(in["x_test"]);
            const std::vector<double> p = probe.predict_proba(xt);
            json proba = json::array();
            for (int i = 0; i < xt.rows; ++i)
                proba.push_back(std::vector<double>(p.begin() + (size_t)i * probe.n_classes(),
                                                    p.begin() + (size_t)(i + 1) * probe.n_classes()));
            out["proba"] = proba;
            out["pred"] = probe.predict(xt);
            out["iterations"] = probe.iterations();
            out["converged"] = probe.converged();
        }
        if (in.contains("f1_true"))
            out["macro_f1"] = kvlens::macro_f1(in["f1_true"].get<std::vector<int>>(),
                                               in["f1_pred"].get<std::vector<int>>());
        std::cout << out.dump() << "\n";
    } catch (const std::exception& e) {
        fprintf(stderr, "probe-ref: %s\n", e.what());
        return 1;
    }
    return 0;
}
