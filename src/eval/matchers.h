// Answer matchers: label a model output correct or incorrect against a dataset's reference answer
// (method.md section 2 step 5; the conventions are those of shared/data/DATA.md).
//
//   number_after_answer  the last number after the last "Answer:" (case-insensitive), compared numerically.
//                        Thousands commas, a sign, decimals, "$" and "%" and a trailing period are tolerated.
//                        No "Answer:", or no number after the last one -> nothing extracted, incorrect:
//                        a number that only appears in the prose does not count.
//   boxed                the content of the last \boxed{...} or \fbox{...} (brace-balanced), compared with
//   the
//                        reference after normalize_latex_answer() on both sides.
//   boxed_number         boxed, and when the boxed content is a plain number (after the same normalisation,
//                        "$", "%" and thousands commas dropped) a numeric comparison with the reference's
//                        number: for GSM8K / MGSM with Qwen's "put your final answer within \boxed{}" prompt.
//   choice_letter        the option letter A-E after the last "Answer:" ("B", "(B)", "B)", "**B**", "b.");
//                        without any "Answer:", the letter right after the last "answer is" ("Therefore,
//                        the answer is: C", "The answer is (A)."), as Qwen2.5 often ends.
//   last_number          the last number anywhere in the output, compared numerically: for small models that
//                        ignore the requested answer format (the classic GSM8K fallback). Lenient by design.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace kvlens {

struct MatchResult {
    std::string extracted;  // empty if nothing was found
    bool correct = false;
};

enum class MatcherKind { NumberAfterAnswer, Boxed, ChoiceLetter, LastNumber, BoxedNumber };

// "number_after_answer" | "boxed" | "choice_letter" | "last_number"; anything else -> kvlens::Error listing
// the names.
MatcherKind parse_matcher(const std::string& name);
const char* to_string(MatcherKind);
std::vector<std::string> matcher_names();

MatchResult match_answer(MatcherKind kind, const std::string& output, const std::string& reference);
MatchResult match_number_after_answer(const std::string& output, const std::string& reference);
MatchResult match_boxed(const std::string& output, const std::string& reference);
MatchResult match_choice_letter(const std::string& output, const std::string& reference);
MatchResult match_last_number(const std::string& output, const std::string& reference);
MatchResult match_boxed_number(const std::string& output, const std::string& reference);

// Building blocks, exposed for the tests.

// The last number in `text`, as plain digits: "-1234.5" for "-$1,234.50". nullopt if there is none.
std::optional<std::string> last_number(const std::string& text);
// The content of the last \boxed{...} / \fbox{...}; nullopt if there is none or its braces never close.
std::optional<std::string> last_boxed(const std::string& text);
// The MATH answer normalisation (after Hendrycks et al.'s is_equiv): drops spaces, \left / \right, "\!" and
// other spacing commands, "^\circ", "\%", "\$", \text{...} units after a value; \dfrac/\tfrac -> \frac;
// \frac12 -> \frac{1}{2}, \sqrt2 -> \sqrt{2}; "a/b" of two integers -> \frac{a}{b}; "x=" prefixes of one or
// two characters; thousands commas and trailing zeros of plain numbers ("10,080" -> "10080",
// "2.50" -> "2.5", "42.0" -> "42"); a leading "." gets a 0; "(C)" -> "C".
std::string normalize_latex_answer(const std::string& s);

}  // namespace kvlens
