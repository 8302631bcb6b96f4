// The linear probe, stratified folds, macro-F1, embed task configs and the .npy reader. The comparison with
// scikit-learn is tests/python/test_probe_reference.py.
#include "eval/probe.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "eval/embed_eval.h"
#include "io/npz.h"
#include "util/error.h"

using namespace kvlens;

namespace {

// n points per class around class-specific centres in d dimensions.
void clusters(int n_per, int n_classes, int d, double spread, uint64_t seed, Matrix& x, std::vector<int>& y) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd;
    std::vector<double> centre((size_t)n_classes * d);
    for (double& c : centre) c = nd(rng);
    x = Matrix{};
    x.cols = d;
    y.clear();
    for (int c = 0; c < n_classes; ++c)
        for (int i = 0; i < n_per; ++i) {
            for (int t = 0; t < d; ++t)
                x.data.push_back((float)(centre[(size_t)c * d + t] + spread * nd(rng)));
            y.push_back(c);
            ++x.rows;
        }
}

TEST(StratifiedFolds, BalancedPerClassDeterministicAndSeeded) {
    std::vector<int> y;
    for (int i = 0; i < 103; ++i) y.push_back(i % 7 == 0 ? 2 : i % 3 == 0 ? 1 : 0);
    const std::vector<int> f = stratified_folds(y, 5, 1);
    EXPECT_EQ(f, stratified_folds(y, 5, 1));
    EXPECT_NE(f, stratified_folds(y, 5, 2));
    for (int c = 0; c < 3; ++c) {
        std::vector<int> count(5, 0);
        for (size_t i = 0; i < y.size(); ++i)
            if (y[i] == c) ++count[f[i]];
        EXPECT_LE(
            *std::max_element(count.begin(), count.end()) - *std::min_element(count.begin(), count.end()), 1);
    }
    std::vector<int> size(5, 0);
    for (int v : f) ++size[v];
    EXPECT_LE(*std::max_element(size.begin(), size.end()) - *std::min_element(size.begin(), size.end()), 1);
    EXPECT_THROW(stratified_folds(y, 1, 0), Error);
    EXPECT_THROW(stratified_folds({0, 1}, 3, 0), Error);
}

TEST(MacroF1, ByHand) {
    // class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 1 fp 1 fn 2 -> 0.4; class 2: predicted once, never true ->
    // 0.
    EXPECT_NEAR(macro_f1({0, 0, 1, 1, 1}, {0, 1, 1, 0, 2}), (0.5 + 0.4 + 0.0) / 3.0, 1e-12);
    EXPECT_DOUBLE_EQ(macro_f1({0, 1, 2}, {0, 1, 2}), 1.0);
    EXPECT_THROW(macro_f1({0}, {0, 1}), Error);
}

TEST(LogisticProbe, SeparatesClustersAndConverges) {
    Matrix x;
    std::vector<int> y;
    clusters(40, 4, 10, 0.3, 7, x, y);
    LogisticProbe p;
    p.fit(x, y, 4);
    EXPECT_TRUE(p.converged()) << p.iterations();
    const std::vector<int> pred = p.predict(x);
    int ok = 0;
    for (size_t i = 0; i < y.size(); ++i) ok += pred[i] == y[i];
    EXPECT_EQ(ok, (int)y.size());
    const std::vector<double> pr = p.predict_proba(x);
    for (int i = 0; i < x.rows; ++i) {
        double s = 0;
        for (int c = 0; c < 4; ++c) s += pr[(size_t)i * 4 + c];
        EXPECT_NEAR(s, 1.0, 1e-12);
    }
    // Same data, same result: no randomness anywhere.
    LogisticProbe q;
    q.fit(x, y, 4);
    EXPECT_EQ(q.predict_proba(x), pr);
}

TEST(LogisticProbe, RandomLabelsScoreChanceUnderCrossValidation) {
    Matrix x;
    std::vector<int> y;
    clusters(100, 3, 8, 1.0, 3, x, y);
    std::mt19937_64 rng(5);
    for (int& v : y) v = (int)(rng() % 3);
    const CvResult r = cross_validate(x, y, 3, 5, 0);
    EXPECT_EQ(r.accuracy.size(), 5u);
    EXPECT_LT(r.acc_mean, 0.5);
    Matrix x2;
    std::vector<int> y2;
    clusters(100, 3, 8, 0.5, 3, x2, y2);
    EXPECT_GT(cross_validate(x2, y2, 3, 5, 0).acc_mean, 0.9);
}

TEST(LogisticProbe, BadInputThrows) {
    Matrix x;
    std::vector<int> y;
    clusters(5, 2, 3, 1.0, 1, x, y);
    LogisticProbe p;
    EXPECT_THROW(p.fit(x, y, 1), Error);
    EXPECT_THROW(p.fit(x, std::vector<int>(y.size(), 5), 2), Error);
    EXPECT_THROW(p.fit(x, {0, 1}, 2), Error);
    EXPECT_THROW(p.predict(x), Error);
}

TEST(EmbedTask, ConfigModes) {
    const std::string dir = testing::TempDir();
    {
        FILE* f = fopen((dir + "/rows.jsonl").c_str(), "w");
        fputs(
            "{\"a\": \"one\", \"b\": \"eins\", \"lab\": 3}\n{\"a\": \"two\", \"b\": \"zwei\", \"lab\": 1}\n\n"
            "{\"a\": \"three\", \"b\": \"drei\", \"lab\": 3}\n",
            f);
        fclose(f);
    }
    const EmbedTask t1 = parse_embed_task(
        R"({"name": "t1", "sources": [{"file": "rows.jsonl", "text_field": "a", "label_field": "lab"}]})",
        "t1", dir);
    EXPECT_EQ(t1.texts, (std::vector<std::string>{"one", "two", "three"}));
    EXPECT_EQ(t1.classes, (std::vector<std::string>{"1", "3"}));
    EXPECT_EQ(t1.labels, (std::vector<int>{1, 0, 1}));
    EXPECT_EQ(t1.folds, 5);
    const EmbedTask t2 = parse_embed_task(
        R"({"name": "lang", "sources": [{"file": "rows.jsonl", "text_fields": ["a", "b"], "limit": 2}]})",
        "t2", dir);
    EXPECT_EQ(t2.texts, (std::vector<std::string>{"one", "eins", "two", "zwei"}));
    EXPECT_EQ(t2.classes, (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(t2.labels, (std::vector<int>{0, 1, 0, 1}));
    const EmbedTask t3 = parse_embed_task(
        R"({"name": "origin", "folds": 2, "sources": [{"file": "rows.jsonl", "text_field": "a", "label": "x", "limit": 1},
            {"file": "rows.jsonl", "text_field": "b", "label": "y"}]})",
        "t3", dir);
    EXPECT_EQ(t3.texts.size(), 4u);
    EXPECT_EQ(t3.labels, (std::vector<int>{0, 1, 1, 1}));
    EXPECT_EQ(t3.folds, 2);
    EXPECT_THROW(parse_embed_task(R"({"name": "x", "sources": [{"file": "rows.jsonl", "text_field": "a"}]})",
                                  "e", dir),
                 Error);  // no label
    EXPECT_THROW(
        parse_embed_task(
            R"({"name": "x", "sources": [{"file": "rows.jsonl", "text_field": "zz", "label": "q"}]})", "e",
            dir),
        Error);  // missing field
    EXPECT_THROW(parse_embed_task(R"({"sources": []})", "e", dir), Error);
    EXPECT_THROW(parse_embed_task("{", "e", dir), Error);
}

TEST(EmbedTask, ShippedConfigsLoad) {
    const std::string dir = std::string(KVLENS_SOURCE_DIR) + "/data/embed_tasks";
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
        if (e.path().extension() != ".json") continue;
        const EmbedTask t = load_embed_task(e.path().string());
        EXPECT_GE(t.classes.size(), 2u) << e.path();
        EXPECT_EQ(t.texts.size(), t.labels.size());
        ++n;
    }
    EXPECT_EQ(n, 4);
}

TEST(Npy, RoundTrip) {
    const std::string path = testing::TempDir() + "/m.npy";
    const std::vector<float> v = {1, 2, 3, 4, 5, 6};
    write_npy(path, v.data(), {2, 3});
    const Matrix m = read_npy_matrix(path);
    EXPECT_EQ(m.rows, 2);
    EXPECT_EQ(m.cols, 3);
    EXPECT_EQ(m.data, v);
    const std::vector<int32_t> i = {1, 2};
    write_npy(path, i.data(), {2});
    EXPECT_THROW(read_npy_matrix(path), Error);  // int32, 1-D
}

}  // namespace
