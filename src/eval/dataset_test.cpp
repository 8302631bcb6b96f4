// Dataset configs: the built-in ones against the files in data/, a custom JSONL + config written here (the
// "no code change" promise), and one error per way a config or a JSONL line can be wrong.
#include "eval/dataset.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "eval/matchers.h"
#include "util/error.h"

namespace kvlens {
namespace {

namespace fs = std::filesystem;

const std::string kBuiltin = std::string(KVLENS_SOURCE_DIR) + "/data/configs";

// A fresh directory per test under the gtest temp dir.
class TempDir {
public:
    TempDir() {
        const auto* info = testing::UnitTest::GetInstance()->current_test_info();
        path_ = fs::path(testing::TempDir()) /
                ("kvlens_dataset_" + std::to_string(getpid()) + "_" + info->name());
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir() { fs::remove_all(path_); }
    std::string write(const std::string& name, const std::string& text) const {
        const fs::path p = path_ / name;
        fs::create_directories(p.parent_path());
        std::ofstream(p, std::ios::binary) << text;
        return p.string();
    }
    std::string str() const { return path_.string(); }

private:
    fs::path path_;
};

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

const char* kMinimalConfig = R"({"name": "t", "file": "d.jsonl", "question_field": "q", "answer_field": "a",
                                 "prompt_template": "Q: {question}", "matcher": "number_after_answer"})";

TEST(Dataset, BuiltinNames) {
    const std::vector<std::string> want = {"arith",
                                           "arith-reasoner",
                                           "arith-reasoner-train",
                                           "arith-v2-gsm8k-like",
                                           "arith-v2-math500-like",
                                           "arith-v2-router-train",
                                           "commonsenseqa",
                                           "gsm8k",
                                           "gsm8k-boxed",
                                           "gsm8k-hybrid",
                                           "math500",
                                           "mgsm-bn",
                                           "mgsm-de",
                                           "mgsm-en",
                                           "mgsm-en-boxed",
                                           "mgsm-es",
                                           "mgsm-fr",
                                           "mgsm-ja",
                                           "mgsm-ru",
                                           "mgsm-sw",
                                           "mgsm-te",
                                           "mgsm-th",
                                           "mgsm-zh"};
    EXPECT_EQ(builtin_dataset_names(kBuiltin), want);
}

TEST(Dataset, BuiltinsLoadEveryRow) {
    struct Want {
        const char* name;
        size_t rows;
        MatcherKind matcher;
    };
    for (const Want& w :
         {Want{"gsm8k", 1319, MatcherKind::NumberAfterAnswer}, Want{"math500", 500, MatcherKind::Boxed},
          Want{"gsm8k-boxed", 1319, MatcherKind::BoxedNumber},
          Want{"commonsenseqa", 1221, MatcherKind::ChoiceLetter},
          Want{"arith-reasoner", 500, MatcherKind::NumberAfterAnswer},
          Want{"arith-reasoner-train", 2000, MatcherKind::NumberAfterAnswer},
          Want{"arith-v2-gsm8k-like", 112, MatcherKind::NumberAfterAnswer},
          Want{"arith-v2-math500-like", 400, MatcherKind::NumberAfterAnswer},
          Want{"arith-v2-router-train", 800, MatcherKind::NumberAfterAnswer}}) {
        const DatasetConfig c = load_dataset_config(w.name, kBuiltin);
        EXPECT_EQ(c.name, w.name);
        EXPECT_EQ(c.matcher, w.matcher);
        EXPECT_EQ(load_samples(c).size(), w.rows) << w.name;
    }
    for (const std::string& name : builtin_dataset_names(kBuiltin)) {
        if (name.rfind("mgsm-", 0) != 0) continue;
        const std::vector<Sample> s = load_samples(load_dataset_config(name, kBuiltin));
        ASSERT_EQ(s.size(), 250u) << name;  // the last line has no newline
        EXPECT_EQ(s[0].reference, "18") << name;
        EXPECT_EQ(s[249].id, "249") << name;
        EXPECT_EQ(s[249].reference, "5,600") << name;
    }
}

TEST(Dataset, Gsm8kFirstSample) {
    const DatasetConfig c = load_dataset_config("gsm8k", kBuiltin);
    EXPECT_EQ(c.reference, ReferenceRule::AfterHashes);
    EXPECT_EQ(c.max_tokens, 512);
    const std::vector<Sample> s = load_samples(c, 3);
    ASSERT_EQ(s.size(), 3u);
    EXPECT_EQ(s[0].index, 0);
    EXPECT_EQ(s[2].index, 2);
    EXPECT_EQ(s[0].id, "0");  // the numeric "idx" field as text
    EXPECT_EQ(s[0].reference, "18");
    EXPECT_EQ(s[0].question.rfind("Janet\u2019s ducks lay 16 eggs per day.", 0), 0u);
    EXPECT_EQ(s[0].prompt,
              "Solve this math problem. Give the reasoning steps before giving the final answer on the last "
              "line by "
              "itself in the format of \"Answer:\". Do not add anything other than the integer answer after "
              "\"Answer:\".\n\nQuestion:\n" +
                  s[0].question);
}

TEST(Dataset, OtherBuiltinsFirstSample) {
    const Sample m = load_samples(load_dataset_config("math500", kBuiltin), 1).at(0);
    EXPECT_EQ(m.reference, "\\left( 3, \\frac{\\pi}{2} \\right)");
    EXPECT_EQ(m.id, "test/precalculus/807.json");
    EXPECT_EQ(m.prompt, "Question: " + m.question +
                            "\nPlease reason step by step, and put your final answer within \\boxed{}.");
    const Sample q = load_samples(load_dataset_config("commonsenseqa", kBuiltin), 1).at(0);
    EXPECT_EQ(q.reference, "A");
    EXPECT_NE(q.prompt.find("'Answer: $LETTER'"), std::string::npos);
    EXPECT_NE(q.prompt.find("(E) new york"), std::string::npos);
    const Sample d = load_samples(load_dataset_config("mgsm-de", kBuiltin), 1).at(0);
    EXPECT_EQ(d.question.rfind("Janets Enten legen 16 Eier pro Tag.", 0), 0u);
    EXPECT_EQ(d.prompt.rfind("Solve this math problem.", 0), 0u);  // English instruction for every language
}

// The matchers accept every reference of the real sets: an ideal output is judged correct.
TEST(Dataset, ReferencesWorkWithTheirMatchers) {
    for (const char* name : {"gsm8k", "mgsm-en", "commonsenseqa"}) {
        const DatasetConfig c = load_dataset_config(name, kBuiltin);
        for (const Sample& s : load_samples(c)) {
            const MatchResult r =
                match_answer(c.matcher, "Reasoning...\nAnswer: " + s.reference, s.reference);
            ASSERT_TRUE(r.correct) << name << " line " << s.index << ": reference '" << s.reference << "'";
        }
    }
    // MATH-500: the solution's last \boxed{} must equal the answer after normalisation. The config format
    // makes this a matter of pointing question_field at "solution".
    DatasetConfig c = load_dataset_config("math500", kBuiltin);
    c.question_field = "solution";
    for (const Sample& s : load_samples(c)) {
        ASSERT_TRUE(match_boxed(s.question, s.reference).correct)
            << "line " << s.index << ": " << s.reference;
    }
}

TEST(Dataset, CustomJsonlNeedsOnlyAConfig) {
    TempDir dir;
    dir.write("sets/qa.jsonl",
              "{\"key\": \"a1\", \"text\": \"What is 2+2?\", \"sol\": \"2+2=4\\n#### 4\"}\n"
              "\n"  // blank lines are skipped but still counted for the index
              "{\"key\": 7, \"text\": \"What is 10*10?\", \"sol\": \"#### 100\", \"extra\": [1]}\r\n"
              "{\"text\": \"No id here\", \"sol\": \"#### 1,000\"}");
    const std::string cfg = dir.write("configs/mine.json", R"({
        "name": "mine", "file": "../sets/qa.jsonl", "question_field": "text", "answer_field": "sol",
        "id_field": "key", "reference": "after_hashes", "system": "Be brief.",
        "prompt_template": "{question}\n---\n{question}", "matcher": "number_after_answer", "max_tokens": 64})");
    const DatasetConfig c = load_dataset_config(cfg, "/nonexistent");
    EXPECT_EQ(c.name, "mine");
    EXPECT_EQ(c.system, "Be brief.");
    EXPECT_EQ(c.max_tokens, 64);
    EXPECT_EQ(fs::path(c.file), fs::path(dir.str()) / "sets/qa.jsonl");
    const std::vector<Sample> s = load_samples(c);
    ASSERT_EQ(s.size(), 3u);
    EXPECT_EQ(s[0].id, "a1");
    EXPECT_EQ(s[0].reference, "4");
    EXPECT_EQ(s[0].prompt, "What is 2+2?\n---\nWhat is 2+2?");
    EXPECT_EQ(s[1].index, 2);
    EXPECT_EQ(s[1].id, "7");
    EXPECT_EQ(s[1].reference, "100");
    EXPECT_EQ(s[2].id, "");
    EXPECT_EQ(s[2].reference, "1,000");
    EXPECT_TRUE(match_answer(c.matcher, "Answer: 1000", s[2].reference).correct);
    EXPECT_EQ(load_samples(c, 2).size(), 2u);

    // Defaults: reference as_is, id_field "id", no system, max_tokens 512; numeric answers become text.
    dir.write("d.jsonl", "{\"q\": \"x\", \"a\": 2.5, \"id\": 3}\n");
    const DatasetConfig m = load_dataset_config(dir.write("m.json", kMinimalConfig), "");
    EXPECT_EQ(m.reference, ReferenceRule::AsIs);
    EXPECT_EQ(m.system, "");
    EXPECT_EQ(m.max_tokens, 512);
    const Sample one = load_samples(m).at(0);
    EXPECT_EQ(one.reference, "2.5");
    EXPECT_EQ(one.id, "3");
    EXPECT_EQ(one.group, "");
}

TEST(Dataset, GroupFieldIsReadAndRequired) {
    TempDir dir;
    dir.write("d.jsonl",
              "{\"q\": \"x\", \"a\": 1, \"level\": 3}\n{\"q\": \"y\", \"a\": 2, \"level\": \"hard\"}\n");
    std::string cfg = kMinimalConfig;
    cfg.insert(cfg.size() - 1, R"(, "group_field": "level")");
    const DatasetConfig c = load_dataset_config(dir.write("c.json", cfg), "");
    EXPECT_EQ(c.group_field, "level");
    const std::vector<Sample> s = load_samples(c);
    ASSERT_EQ(s.size(), 2u);
    EXPECT_EQ(s[0].group, "3");
    EXPECT_EQ(s[1].group, "hard");
    dir.write("d.jsonl", "{\"q\": \"x\", \"a\": 1}\n");
    EXPECT_NE(error_of([&] { load_samples(c); }).find("line 1: missing field 'level'"), std::string::npos);
}

TEST(Dataset, JsonlErrorsNameFileAndLine) {
    TempDir dir;
    const std::string file =
        dir.write("d.jsonl", "{\"q\": \"a\", \"a\": \"1\"}\n{\"q\": \"b\", \"a\": \"2\"}\n{bad\n");
    const DatasetConfig c = load_dataset_config(dir.write("c.json", kMinimalConfig), "");
    EXPECT_EQ(error_of([&] { load_samples(c); }).rfind("dataset '" + file + "' line 3: invalid JSON: ", 0),
              0u);
    EXPECT_EQ(load_samples(c, 2).size(), 2u);  // the bad line is past the limit

    auto fails_with = [&](const std::string& jsonl, const std::string& want) {
        dir.write("d.jsonl", jsonl);
        EXPECT_EQ(error_of([&] { load_samples(c); }), "dataset '" + file + "' " + want);
    };
    fails_with("{\"q\": \"a\", \"a\": \"1\"}\n{\"a\": \"2\"}\n", "line 2: missing field 'q'");
    fails_with("{\"q\": \"a\"}\n", "line 1: missing field 'a'");
    fails_with("[1, 2]\n", "line 1: expected a JSON object");
    fails_with("{\"q\": [\"a\"], \"a\": \"1\"}\n",
               "line 1: field 'q' is array, expected a string or a number");
    fails_with("{\"q\": \"a\", \"a\": null}\n", "line 1: field 'a' is null, expected a string or a number");
    fails_with("{\"q\": \"a\", \"a\": \"  \"}\n", "line 1: empty reference in field 'a'");

    DatasetConfig hashes = c;
    hashes.reference = ReferenceRule::AfterHashes;
    dir.write("d.jsonl", "{\"q\": \"a\", \"a\": \"no marker\"}\n");
    EXPECT_EQ(error_of([&] { load_samples(hashes); }),
              "dataset '" + file + "' line 1: field 'a': answer has no '####'");

    DatasetConfig missing = c;
    missing.file = dir.str() + "/nope.jsonl";
    EXPECT_EQ(
        error_of([&] { load_samples(missing); }).rfind("dataset '" + missing.file + "': cannot open", 0), 0u);
}

TEST(Dataset, ConfigErrors) {
    auto err = [](const std::string& text) {
        return error_of([&] { parse_dataset_config(text, "c.json"); });
    };
    EXPECT_EQ(err("{").rfind("dataset config 'c.json': invalid JSON: ", 0), 0u);
    EXPECT_EQ(err("[]"), "dataset config 'c.json': expected a JSON object");
    EXPECT_EQ(err(R"({"name": "t", "file": "d.jsonl", "answer_field": "a", "prompt_template": "{question}",
                     "matcher": "boxed"})"),
              "dataset config 'c.json': missing field 'question_field'");
    EXPECT_EQ(err(R"({"name": "t", "file": "d.jsonl", "question_field": "q", "answer_field": "a",
                     "prompt_template": "{question}", "matcher": "boxed", "questoin_field": "x"})")
                  .rfind("dataset config 'c.json': unknown field 'questoin_field' (known: name, file, ", 0),
              0u);
    EXPECT_EQ(err(R"({"name": "t", "file": "d.jsonl", "question_field": "q", "answer_field": "a",
                     "prompt_template": "Q:", "matcher": "boxed"})"),
              "dataset config 'c.json': prompt_template has no {question}");
    EXPECT_EQ(err(R"({"name": "t", "file": "d.jsonl", "question_field": "q", "answer_field": "a",
                     "prompt_template": "{question}", "matcher": "regex"})"),
              "dataset config 'c.json': matcher 'regex': unknown (expected number_after_answer, boxed, "
              "boxed_number, choice_letter or last_number)");
    EXPECT_EQ(err(R"({"name": "t", "file": "d.jsonl", "question_field": "q", "answer_field": "a",
                     "prompt_template": "{question}", "matcher": "boxed", "reference": "last_line"})"),
              "dataset config 'c.json': reference 'last_line' is unknown (expected as_is or after_hashes)");
    EXPECT_EQ(err(R"({"name": "t", "file": "d.jsonl", "question_field": "q", "answer_field": "a",
                     "prompt_template": "{question}", "matcher": "boxed", "max_tokens": 0})"),
              "dataset config 'c.json': field 'max_tokens' must be a positive integer");
    EXPECT_EQ(err(R"({"name": 3, "file": "d.jsonl", "question_field": "q", "answer_field": "a",
                     "prompt_template": "{question}", "matcher": "boxed"})"),
              "dataset config 'c.json': field 'name' must be a string");
}

TEST(Dataset, HybridIsReadAndChecked) {
    const std::string base = R"({"name": "t", "file": "d.jsonl", "question_field": "q", "answer_field": "a",
                                 "prompt_template": "{question}", "matcher": "boxed")";
    const DatasetConfig plain = parse_dataset_config(base + "}", "c.json");
    EXPECT_TRUE(plain.hybrid.close.empty());
    const DatasetConfig c = parse_dataset_config(
        base + R"(, "hybrid": {"fast": "F", "slow": "S", "close": "so \\boxed{", "marker": "\\boxed{"}})",
        "c.json");
    EXPECT_EQ(c.hybrid.fast, "F");
    EXPECT_EQ(c.hybrid.slow, "S");
    EXPECT_EQ(c.hybrid.close, "so \\boxed{");
    EXPECT_EQ(c.hybrid.marker, "\\boxed{");
    auto err = [&](const std::string& hybrid) {
        return error_of([&] { parse_dataset_config(base + R"(, "hybrid": )" + hybrid + "}", "c.json"); });
    };
    EXPECT_EQ(err("3"),
              "dataset config 'c.json': field 'hybrid' must be an object {fast, slow, close, marker}");
    EXPECT_EQ(err(R"({"fast": "", "slow": "", "close": "x"})"),
              "dataset config 'c.json': hybrid.marker must be a string");
    EXPECT_EQ(err(R"({"fast": "", "slow": "", "close": "x", "marker": "x", "stop": "y"})"),
              "dataset config 'c.json': hybrid: unknown field 'stop' (known: fast, slow, close, marker)");
    EXPECT_EQ(
        err(R"({"fast": "", "slow": "", "close": "x", "marker": "y"})"),
        "dataset config 'c.json': hybrid: close 'x' does not contain the marker 'y' (closing must end the "
        "reasoning)");
    EXPECT_EQ(err(R"({"fast": "", "slow": "y", "close": "y", "marker": "y"})"),
              "dataset config 'c.json': hybrid: slow 'y' contains the marker 'y' (a slow answer would start "
              "with its reasoning ended)");
    EXPECT_EQ(load_dataset_config("gsm8k-hybrid", kBuiltin).hybrid.marker, "\\boxed{");
}

TEST(Dataset, UnknownNameListsBuiltins) {
    EXPECT_EQ(
        error_of([] { load_dataset_config("gsm9k", kBuiltin); }),
        "dataset 'gsm9k': unknown (built-in: arith, arith-reasoner, arith-reasoner-train, "
        "arith-v2-gsm8k-like, "
        "arith-v2-math500-like, arith-v2-router-train, commonsenseqa, "
        "gsm8k, gsm8k-boxed, gsm8k-hybrid, math500, mgsm-bn, mgsm-de, "
        "mgsm-en, mgsm-en-boxed, "
        "mgsm-es, mgsm-fr, mgsm-ja, mgsm-ru, mgsm-sw, mgsm-te, mgsm-th, mgsm-zh; or give the path of a .json "
        "config)");
    EXPECT_EQ(error_of([] {
                  load_dataset_config("/no/such/config.json", kBuiltin);
              }).rfind("dataset config '/no/such/config.json': cannot open", 0),
              0u);
}

TEST(Dataset, TemplateAndReferenceHelpers) {
    EXPECT_EQ(apply_prompt_template("A {question} B {question}", "x"), "A x B x");
    EXPECT_EQ(apply_prompt_template("\\boxed{} {question}", "{question}"),
              "\\boxed{} {question}");  // no re-expansion
    EXPECT_EQ(extract_reference(ReferenceRule::AfterHashes, "a #### 1\n#### 2 "), "2");
    EXPECT_EQ(extract_reference(ReferenceRule::AsIs, " 7\n"), "7");
}

}  // namespace
}  // namespace kvlens
