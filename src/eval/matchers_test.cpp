// Matchers on tables of tricky model outputs. Each row states what must be extracted and whether it is
// correct, so a row fails if either changes.
#include "eval/matchers.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "util/error.h"

namespace kvlens {
namespace {

struct Case {
    const char* output;
    const char* reference;
    const char* extracted;
    bool correct;
};

void check(MatcherKind kind, const std::vector<Case>& cases) {
    for (const Case& c : cases) {
        SCOPED_TRACE(std::string("output: ") + c.output + "\nreference: " + c.reference);
        const MatchResult r = match_answer(kind, c.output, c.reference);
        EXPECT_EQ(r.extracted, c.extracted);
        EXPECT_EQ(r.correct, c.correct);
    }
}

TEST(Matchers, NumberAfterAnswer) {
    check(MatcherKind::NumberAfterAnswer,
          {
              {"16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\nAnswer: 18", "18", "18", true},
              {"Answer: 18", "19", "18", false},
              {"answer: 18", "18", "18", true},      // case-insensitive
              {"ANSWER:18", "18", "18", true},       // no space
              {"**Answer:** 42", "42", "42", true},  // markdown
              {"**Answer**: 42", "42", "42", true},  // bold word, colon outside
              {"Answer: **42**", "42", "42", true},
              {"Answer: 1,234", "1234", "1234", true},  // thousands comma
              {"Answer: 1234", "1,234", "1234", true},  // comma in the reference (GSM8K)
              {"Answer: 1,234,567.5", "1234567.5", "1234567.5", true},
              {"Answer: 1,23", "123", "23", false},  // not a thousands group
              {"Answer: -5", "-5", "-5", true},      // negative
              {"Answer: -5", "5", "-5", false},
              {"Answer: 10-3", "7", "3", false},              // minus between operands
              {"Answer: x = -3.25", "-3.25", "-3.25", true},  // decimals
              {"Answer: 42.", "42", "42", true},              // trailing period
              {"Answer: 42.0", "42", "42.0", true},           // numeric comparison
              {"Answer: .5", "0.5", "0.5", true},
              {"Answer: $1,200", "1200", "1200", true},  // dollar sign
              {"Answer: -$5", "-5", "-5", true},
              {"Answer: 25%", "25", "25", true},                            // percent sign
              {"Answer: The total is 3 + 4 = 7 dollars.", "7", "7", true},  // last number after Answer:
              {"Answer: 12\nWait, I made an error.\nAnswer: 14", "14", "14", true},  // several Answer: lines
              {"Answer: 14\nLet me recheck.\nAnswer: 12", "14", "12", false},
              {"Answer: 14\nFinal answer: none", "14", "", false},  // the last Answer: has no number
              {"The answer is 18.", "18", "", false},               // only in the prose
              {"So she makes $18 every day.", "18", "", false},     // no Answer: at all
              {"", "18", "", false},
              {"Answer: 18", "eighteen", "18", false},  // reference without a number
              {"Answer：18", "18", "18", true},         // full-width colon
              {"Answer: \xE2\x88\x92"
               "7",
               "-7", "-7", true},  // U+2212 minus
              {"Answer: 7", "7 ", "7", true},
          });
}

TEST(Matchers, Boxed) {
    check(
        MatcherKind::Boxed,
        {
            {"So the answer is $\\boxed{18}$.", "18", "18", true},
            {"$\\boxed{17}$", "18", "17", false},
            {"First \\boxed{1}, then \\boxed{2}", "2", "2", true},            // the last one
            {"\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}", true},  // nested braces
            {"\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}2", "\\frac{\\sqrt{3}}{2}", true},
            {"\\boxed{\\dfrac{17}{50}}", "\\frac{17}{50}", "\\dfrac{17}{50}", true},  // \dfrac
            {"\\boxed{\\tfrac{3}{4}}", "\\frac 34", "\\tfrac{3}{4}", true},
            {"\\boxed{3/4}", "\\frac{3}{4}", "3/4", true},  // a/b
            {"\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})",
             true},
            {"\\boxed{90}", "90^\\circ", "90", true},  // degrees
            {"\\boxed{90^{\\circ}}", "90", "90^{\\circ}", true},
            {"\\boxed{10080}", "10,\\!080", "10080", true},       // \! and thousands commas
            {"\\boxed{32,348}", "\\$32,\\!348", "32,348", true},  // \$
            {"\\boxed{5.4}", "5.4 \\text{ cents}", "5.4", true},  // units text
            {"\\boxed{864}", "864 \\mbox{ inches}^2", "864", true},
            {"\\boxed{\\frac{270}{7}}", "\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", true},
            {"\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", "\\text{Evelyn}", true},
            {"\\boxed{Evelyn}", "\\text{Evelyn}", "Evelyn", true},
            {"\\boxed{C}", "\\text{(C)}", "C", true},
            {"\\boxed{42.0}", "42", "42.0", true},  // trailing .0
            {"\\boxed{2.50}", "2.5", "2.50", true},
            {"\\boxed{0.35625}", ".35625", "0.35625", true},  // leading 0
            {"\\boxed{5}", "x=5", "5", true},                 // short left side
            {"\\boxed{11\\sqrt2}", "11\\sqrt{2}", "11\\sqrt2", true},
            {"\\boxed{50\\%}", "50", "50\\%", true},
            {"\\fbox{7}", "7", "7", true},  // \fbox
            {"\\boxed {7}", "7", "7", true},
            {"\\boxed 7$", "7", "7", true},  // brace-less form
            {"\\boxed{x \\in [-2,7]}", "x \\in [-2,7]", "x \\in [-2,7]", true},
            {"\\boxed{\\{1\\pm\\sqrt{5},-2\\}}", "\\{1\\pm\\sqrt{5},-2\\}", "\\{1\\pm\\sqrt{5},-2\\}", true},
            {"\\boxed{1,-2}", "-2,1", "1,-2", false},             // order matters (string compare)
            {"\\boxed{\\frac{1}{3}", "\\frac{1}{3}", "", false},  // truncated: braces never close
            {"The answer is 18.", "18", "", false},               // no box
            {"Answer: 18", "18", "", false},
            {"\\boxed{}", "", "", false},  // empty box is never correct
        });
}

TEST(Matchers, ChoiceLetter) {
    check(MatcherKind::ChoiceLetter,
          {
              {"Banks need security.\nAnswer: A", "A", "A", true},
              {"Answer: A", "B", "A", false},
              {"Answer: (B)", "B", "B", true},
              {"Answer: B) library", "B", "B", true},
              {"Answer: **B**", "B", "B", true},
              {"**Answer:** C", "C", "C", true},
              {"Answer: D.", "D", "D", true},
              {"Answer: e", "E", "E", true},  // lowercase
              {"answer: (c)", "C", "C", true},
              {"Answer: $\\boxed{B}$", "B", "B", true},
              {"Answer: The correct option is (D) mall", "D", "D", true},
              {"Answer: a bank", "A", "", false},                  // the article, not a letter
              {"Answer: A\nHmm, no.\nAnswer: C", "C", "C", true},  // several Answer: lines
              {"Answer: F", "A", "", false},                       // not an option
              // No "Answer:" line: the letter right after the last "answer is" (Qwen2.5's habit).
              {"The answer is (A).", "A", "A", true},
              {"...\nTherefore, the answer is: C", "C", "C", true},
              {"Therefore, the answer is: C", "B", "C", false},
              {"THE ANSWER IS **E**", "E", "E", true},
              {"The answer is A, no wait, the answer is D.", "D", "D", true},  // the last one
              {"I think the answer is a bank.", "A", "", false},               // the article again
              {"The correct answer is that (B) fits.", "B", "", false},        // not right after it
              {"The best choice is (B).", "B", "", false},                     // no marker at all
              {"The answer is: C\nAnswer: none of them", "C", "", false},      // an Answer: line wins
              {"Answer: Bank", "A", "", false},
              {"Answer: B", "(B)", "B", true},  // reference with parentheses
          });
}

TEST(Matchers, LastNumber) {
    EXPECT_EQ(last_number("a 1 b 2,000 c"), "2000");
    EXPECT_EQ(last_number("H2O"), std::nullopt);  // glued to a word
    EXPECT_EQ(last_number("no digits"), std::nullopt);
    EXPECT_EQ(last_number("(-3)"), "-3");
}

TEST(Matchers, LastNumberMatcher) {
    check(MatcherKind::LastNumber,
          {
              {"7 + 5 = 12\nThe final answer is 12.", "12", "12", true},  // trailing period
              {"23 + 48 = 92", "71", "92", false},
              {"6 * 7 = 42\nThe answer is N.", "42", "42", true},  // format ignored, number still last
              {"He has 7 + 4 = 11 apples.", "7", "11", false},     // last, not first
              {"The result is -17.", "-17", "-17", true},
              {"It is 1,200 in total", "1200", "1200", true},
              {"I do not know.", "5", "", false},
          });
}

TEST(Matchers, LastBoxed) {
    EXPECT_EQ(last_boxed("\\boxed{a{b}c} and \\boxed{d}"), "d");
    EXPECT_EQ(last_boxed("\\boxed{\\{x\\}}"), "\\{x\\}");  // escaped braces do not count
    EXPECT_EQ(last_boxed("\\boxedsomething{1}"), std::nullopt);
    EXPECT_EQ(last_boxed("none"), std::nullopt);
}

TEST(Matchers, Normalize) {
    EXPECT_EQ(normalize_latex_answer("\\left( 3, \\frac{\\pi}{2} \\right)"), "(3,\\frac{\\pi}{2})");
    EXPECT_EQ(normalize_latex_answer("\\frac 59"), "\\frac{5}{9}");
    EXPECT_EQ(normalize_latex_answer("\\dfrac{\\tfrac12}{3}"), "\\frac{\\frac{1}{2}}{3}");
    EXPECT_EQ(normalize_latex_answer("11,\\! 111,\\! 111,\\! 100"), "11111111100");
    EXPECT_EQ(normalize_latex_answer("\\$18.90"), "18.9");
    EXPECT_EQ(normalize_latex_answer("15\\mbox{ cm}^2"), "15");
    EXPECT_EQ(normalize_latex_answer("\\text{east}"), "east");
    EXPECT_EQ(normalize_latex_answer("3, 5, 7"), "3,5,7");  // a list keeps its commas
    EXPECT_EQ(normalize_latex_answer("\\leftarrow"), "\\leftarrow");
    EXPECT_EQ(normalize_latex_answer("-0.0"), "0");
    EXPECT_EQ(normalize_latex_answer("y = 2x + 3"), "2x+3");
    EXPECT_EQ(normalize_latex_answer("\\sqrt[3]2"), "\\sqrt[3]{2}");
}

TEST(Matchers, BoxedNumber) {
    // Qwen's GSM8K answers: the value in the last box, compared as a number.
    EXPECT_TRUE(match_boxed_number("so \\boxed{18}", "18").correct);
    EXPECT_TRUE(match_boxed_number("\\boxed{18.00}", "18").correct);
    EXPECT_TRUE(match_boxed_number("\\boxed{\\$1,080}", "1080").correct);
    EXPECT_TRUE(match_boxed_number("\\boxed{18 \\text{ dollars}}", "18").correct);
    EXPECT_TRUE(match_boxed_number("\\boxed{50\\%}", "50").correct);
    EXPECT_TRUE(match_boxed_number("first \\boxed{3}, then \\boxed{-4}", "-4").correct);
    EXPECT_EQ(match_boxed_number("\\boxed{1,080}", "1080").extracted, "1,080");
    EXPECT_FALSE(match_boxed_number("\\boxed{19}", "18").correct);
    EXPECT_FALSE(match_boxed_number("\\boxed{18 or 19}", "18").correct);  // not a plain number
    EXPECT_FALSE(match_boxed_number("\\boxed{x+18}", "18").correct);
    EXPECT_FALSE(match_boxed_number("The answer is 18.", "18").correct);  // no box, no answer
    EXPECT_TRUE(match_answer(MatcherKind::BoxedNumber, "\\boxed{18}", "18").correct);
}

TEST(Matchers, ParseNames) {
    for (const std::string& n : matcher_names()) EXPECT_EQ(to_string(parse_matcher(n)), n);
    try {
        parse_matcher("regex");
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(),
                     "matcher 'regex': unknown (expected number_after_answer, boxed, boxed_number, "
                     "choice_letter or last_number)");
    }
}

}  // namespace
}  // namespace kvlens
