#include "eval/matchers.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "util/error.h"

namespace kvlens {
namespace {

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}
char upper(char c) {
    return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

bool starts_with_at(const std::string& s, size_t i, const char* p) {
    return s.compare(i, std::strlen(p), p) == 0;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
    for (size_t i = s.find(from); i != std::string::npos; i = s.find(from, i + to.size()))
        s.replace(i, from.size(), to);
}

std::string trim(const std::string& s) {
    size_t b = 0, e = s.size();
    while (b < e && is_space(s[b])) ++b;
    while (e > b && is_space(s[e - 1])) --e;
    return s.substr(b, e - b);
}

// The text after the last "answer:" (any case; "**Answer**:" and a full-width colon also count), or nullopt.
std::optional<std::string> after_last_answer(const std::string& text) {
    std::string low(text.size(), ' ');
    for (size_t i = 0; i < text.size(); ++i) low[i] = lower(text[i]);
    std::optional<std::string> found;
    for (size_t i = low.find("answer"); i != std::string::npos; i = low.find("answer", i + 1)) {
        size_t j = i + 6;
        while (j < low.size() && (low[j] == '*' || low[j] == '_' || low[j] == ' ')) ++j;
        if (j < low.size() && low[j] == ':') {
            found = text.substr(j + 1);
        } else if (starts_with_at(low, j, "\xEF\xBC\x9A")) {  // U+FF1A FULLWIDTH COLON
            found = text.substr(j + 3);
        }
    }
    return found;
}

// The text after the last "answer is" (any case), past an optional colon: "Therefore, the answer is: C",
// "The answer is (B).". nullopt if there is none.
std::optional<std::string> after_last_answer_is(const std::string& text) {
    std::string low(text.size(), ' ');
    for (size_t i = 0; i < text.size(); ++i) low[i] = lower(text[i]);
    const size_t p = low.rfind("answer is");
    if (p == std::string::npos) return std::nullopt;
    size_t j = p + 9;
    while (j < low.size() && (low[j] == '*' || low[j] == '_' || low[j] == ' ')) ++j;
    if (j < low.size() && low[j] == ':') ++j;
    return text.substr(j);
}

// Reads a {group} at s[i] == '{' (brace-balanced; "\{" and "\}" are literal). Returns the index after the
// closing brace, or npos if it never closes.
size_t skip_group(const std::string& s, size_t i) {
    int depth = 0;
    for (; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == '{' || s[i + 1] == '}')) {
            ++i;
        } else if (s[i] == '{') {
            ++depth;
        } else if (s[i] == '}' && --depth == 0) {
            return i + 1;
        }
    }
    return std::string::npos;
}

bool is_number(const std::string& s) {
    size_t i = (!s.empty() && s[0] == '-') ? 1 : 0;
    size_t digits = 0, dots = 0;
    for (; i < s.size(); ++i) {
        if (is_digit(s[i])) {
            ++digits;
        } else if (s[i] == '.') {
            ++dots;
        } else {
            return false;
        }
    }
    return digits > 0 && dots <= 1;
}

// ---- LaTeX normalisation steps ----

// \left( -> (, \right] -> ], \left. -> nothing; \leftarrow and friends are left alone.
void drop_left_right(std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
        size_t n = starts_with_at(s, i, "\\left") ? 5 : starts_with_at(s, i, "\\right") ? 6 : 0;
        if (n && !(i + n < s.size() && is_alpha(s[i + n]))) {
            i += n;
            if (i < s.size() && s[i] == '.') ++i;  // the invisible delimiter
            continue;
        }
        out += s[i++];
    }
    s = out;
}

// \text{...} and friends: units after a value ("5.4 \text{ cents}", "864 \mbox{ inches}^2") are dropped;
// anything else is unwrapped ("\text{Evelyn}" -> "Evelyn", "\text{(C)}" -> "(C)").
void handle_text_commands(std::string& s) {
    static const char* const kCommands[] = {"\\textbf", "\\textrm", "\\textit",
                                            "\\text",   "\\mbox",   "\\mathrm"};
    for (size_t i = 0; i < s.size();) {
        if (s[i] != '\\') {
            ++i;
            continue;
        }
        size_t name = 0;
        for (const char* c : kCommands) {
            if (starts_with_at(s, i, c)) {
                name = std::strlen(c);
                break;
            }
        }
        size_t open = i + name;
        while (name && open < s.size() && s[open] == ' ') ++open;
        if (!name || open >= s.size() || s[open] != '{') {
            ++i;
            continue;
        }
        const size_t close = skip_group(s, open);
        if (close == std::string::npos) return;
        // A trailing exponent belongs to the unit (cm^2).
        size_t end = close;
        if (end + 1 < s.size() && s[end] == '^' && (is_digit(s[end + 1]) || s[end + 1] == '{')) {
            end = s[end + 1] == '{' ? skip_group(s, end + 1) : end + 2;
            if (end == std::string::npos) end = close;
        }
        const bool at_end = trim(s.substr(end)).empty();
        const bool after_value = !trim(s.substr(0, i)).empty();
        if (at_end && after_value) {
            s.erase(i);
            return;
        }
        s.replace(i, close - i, s.substr(open + 1, close - open - 2));  // i stays: rescan the content
    }
}

// Reads one macro argument at s[i]: a {group}, a \command, or one character. Sets `arg` to its content
// (without braces) and returns the index after it.
size_t read_arg(const std::string& s, size_t i, std::string& arg) {
    if (i >= s.size()) {
        arg.clear();
        return i;
    }
    if (s[i] == '{') {
        const size_t close = skip_group(s, i);
        if (close == std::string::npos) {  // unbalanced: take the rest as is
            arg = s.substr(i);
            return s.size();
        }
        arg = s.substr(i + 1, close - i - 2);
        return close;
    }
    if (s[i] == '\\') {
        size_t j = i + 1;
        while (j < s.size() && is_alpha(s[j])) ++j;
        if (j == i + 1 && j < s.size()) ++j;  // \{ and other one-symbol commands
        arg = s.substr(i, j - i);
        return j;
    }
    arg = s.substr(i, 1);
    return i + 1;
}

// \frac12 -> \frac{1}{2}, \frac{270}7 -> \frac{270}{7}, \sqrt2 -> \sqrt{2} (spaces are already gone), inside
// nested arguments too.
std::string brace_macro_args(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
        const bool frac = starts_with_at(s, i, "\\frac") && !(i + 5 < s.size() && is_alpha(s[i + 5]));
        const bool sqrt = starts_with_at(s, i, "\\sqrt") && !(i + 5 < s.size() && is_alpha(s[i + 5]));
        if (!frac && !sqrt) {
            out += s[i++];
            continue;
        }
        out += frac ? "\\frac" : "\\sqrt";
        i += 5;
        if (sqrt && i < s.size() && s[i] == '[') {  // \sqrt[3]{x}: copy the index
            const size_t close = s.find(']', i);
            const size_t stop = close == std::string::npos ? s.size() : close + 1;
            out += s.substr(i, stop - i);
            i = stop;
        }
        for (int a = 0; a < (frac ? 2 : 1); ++a) {
            std::string arg;
            i = read_arg(s, i, arg);
            out += "{" + brace_macro_args(arg) + "}";
        }
    }
    return out;
}

// "x=5" -> "5" when the left side is a one- or two-character name (as in Hendrycks' strip_string).
void drop_short_lhs(std::string& s) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || s.find('=', eq + 1) != std::string::npos) return;
    if (eq >= 1 && eq <= 2) s = s.substr(eq + 1);
}

// ".5" -> "0.5" wherever a decimal point starts a number.
void add_leading_zeros(std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '.' && i + 1 < s.size() && is_digit(s[i + 1]) && (i == 0 || !is_digit(s[i - 1])))
            out += '0';
        out += s[i];
    }
    s = out;
}

// "1,234" / "-12,345,678.5": digits in comma groups of three, optionally signed, optionally with a fraction.
bool is_thousands_number(const std::string& s) {
    size_t i = (!s.empty() && s[0] == '-') ? 1 : 0, lead = 0, groups = 0;
    for (; i < s.size() && is_digit(s[i]); ++i) ++lead;
    if (lead < 1 || lead > 3) return false;
    for (; i < s.size() && s[i] == ','; i += 4, ++groups) {
        if (i + 3 >= s.size() || !(is_digit(s[i + 1]) && is_digit(s[i + 2]) && is_digit(s[i + 3])))
            return false;
    }
    if (groups == 0) return false;
    if (i == s.size()) return true;
    if (s[i] != '.' || i + 1 == s.size()) return false;
    for (++i; i < s.size(); ++i) {
        if (!is_digit(s[i])) return false;
    }
    return true;
}

// A whole-string plain number: thousands commas out, trailing fractional zeros out ("42.0" -> "42").
void canonical_number(std::string& s) {
    std::string t = s;
    if (is_thousands_number(t)) replace_all(t, ",", "");
    if (!is_number(t)) return;
    if (t.find('.') != std::string::npos) {
        while (t.back() == '0') t.pop_back();
        if (t.back() == '.') t.pop_back();
    }
    if (t == "-0") t = "0";
    s = t;
}

// "3/4" or "-3/4" -> \frac{3}{4}.
void slash_to_frac(std::string& s) {
    const size_t slash = s.find('/');
    if (slash == std::string::npos) return;
    const bool neg = !s.empty() && s[0] == '-';
    const std::string a = s.substr(neg ? 1 : 0, slash - (neg ? 1 : 0)), b = s.substr(slash + 1);
    auto all_digits = [](const std::string& x) {
        if (x.empty()) return false;
        for (char c : x) {
            if (!is_digit(c)) return false;
        }
        return true;
    };
    if (all_digits(a) && all_digits(b)) s = std::string(neg ? "-" : "") + "\\frac{" + a + "}{" + b + "}";
}

bool numbers_equal(const std::string& a, const std::string& b) {
    const double x = std::strtod(a.c_str(), nullptr), y = std::strtod(b.c_str(), nullptr);
    return std::fabs(x - y) <= 1e-9 * std::max(1.0, std::fabs(y));
}

// A choice letter at the start of `s` (after markup): "B", "(B)", "**B**", "b.", "\boxed{B}".
std::optional<char> leading_letter(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
        if (std::strchr(" \t\r\n*_([{$\"'`", s[i])) {
            ++i;
        } else if (s[i] == '\\') {  // \textbf{, \boxed{, \text{ ...
            ++i;
            while (i < s.size() && is_alpha(s[i])) ++i;
        } else {
            break;
        }
    }
    if (i >= s.size()) return std::nullopt;
    const char c = s[i], next = i + 1 < s.size() ? s[i + 1] : '\0';
    if (is_alpha(next)) return std::nullopt;  // a word, not a letter
    if (c >= 'A' && c <= 'E') return c;
    // Lowercase only when it cannot be the article: "a." and "b)" count, "a bank" does not.
    if (c >= 'a' && c <= 'e' && !(next == ' ' && i + 2 < s.size() && is_alpha(s[i + 2]))) return upper(c);
    return std::nullopt;
}

}  // namespace

MatcherKind parse_matcher(const std::string& name) {
    if (name == "number_after_answer") return MatcherKind::NumberAfterAnswer;
    if (name == "boxed") return MatcherKind::Boxed;
    if (name == "choice_letter") return MatcherKind::ChoiceLetter;
    if (name == "last_number") return MatcherKind::LastNumber;
    if (name == "boxed_number") return MatcherKind::BoxedNumber;
    throw Error(
        "matcher '" + name +
        "': unknown (expected number_after_answer, boxed, boxed_number, choice_letter or last_number)");
}

const char* to_string(MatcherKind kind) {
    switch (kind) {
        case MatcherKind::NumberAfterAnswer:
            return "number_after_answer";
        case MatcherKind::Boxed:
            return "boxed";
        case MatcherKind::ChoiceLetter:
            return "choice_letter";
        case MatcherKind::LastNumber:
            return "last_number";
        case MatcherKind::BoxedNumber:
            return "boxed_number";
    }
    return "?";
}

std::vector<std::string> matcher_names() {
    return {"number_after_answer", "boxed", "boxed_number", "choice_letter", "last_number"};
}

std::optional<std::string> last_number(const std::string& text) {
    std::optional<std::string> last;
    for (size_t i = 0; i < text.size();) {
        const bool starts =
            is_digit(text[i]) || (text[i] == '.' && i + 1 < text.size() && is_digit(text[i + 1]));
        if (!starts || (i > 0 && (is_digit(text[i - 1]) || is_alpha(text[i - 1])))) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < text.size() && is_digit(text[j])) ++j;
        // Thousands groups: ",ddd" not followed by another digit. "1,23" stays two numbers.
        while (j + 3 < text.size() && text[j] == ',' && is_digit(text[j + 1]) && is_digit(text[j + 2]) &&
               is_digit(text[j + 3]) && !(j + 4 < text.size() && is_digit(text[j + 4]))) {
            j += 4;
        }
        if (j + 1 < text.size() && text[j] == '.' && is_digit(text[j + 1])) {
            ++j;
            while (j < text.size() && is_digit(text[j])) ++j;
        }
        std::string num;
        for (size_t k = i; k < j; ++k) {
            if (text[k] != ',') num += text[k];
        }
        if (num[0] == '.') num = "0" + num;
        // A sign right before the number (or before its "$"), unless it is a minus between two operands.
        size_t s = i;
        if (s > 0 && text[s - 1] == '$') --s;
        size_t sign_len = 0;
        if (s >= 1 && text[s - 1] == '-') {
            sign_len = 1;
        } else if (s >= 3 && text.compare(s - 3, 3, "\xE2\x88\x92") == 0) {  // U+2212 MINUS SIGN
            sign_len = 3;
        }
        if (sign_len) {
            const size_t before = s - sign_len;
            if (before == 0 ||
                !(is_digit(text[before - 1]) || is_alpha(text[before - 1]) || text[before - 1] == ')'))
                num = "-" + num;
        }
        last = num;
        i = j;
    }
    return last;
}

std::optional<std::string> last_boxed(const std::string& text) {
    size_t best = std::string::npos, name_len = 0;
    for (const char* cmd : {"\\boxed", "\\fbox"}) {
        const size_t p = text.rfind(cmd);
        if (p != std::string::npos && (best == std::string::npos || p > best)) {
            best = p;
            name_len = std::strlen(cmd);
        }
    }
    if (best == std::string::npos) return std::nullopt;
    size_t i = best + name_len;
    while (i < text.size() && text[i] == ' ') ++i;
    if (i < text.size() && text[i] == '{') {
        const size_t close = skip_group(text, i);
        if (close == std::string::npos) return std::nullopt;  // truncated output
        return text.substr(i + 1, close - i - 2);
    }
    // "\boxed 5": one token, up to a space or "$".
    if (i == best + name_len) return std::nullopt;  // \boxedfoo is another command
    size_t j = i;
    while (j < text.size() && !is_space(text[j]) && text[j] != '$') ++j;
    if (j == i) return std::nullopt;
    return text.substr(i, j - i);
}

std::string normalize_latex_answer(const std::string& input) {
    std::string s = input;
    for (char& c : s) {
        if (is_space(c)) c = ' ';
    }
    // Spacing commands and separators that carry no value.
    for (const char* sp : {"\\qquad", "\\quad", "\\displaystyle", "\\!", "\\,", "\\;", "\\:"})
        replace_all(s, sp, "");
    replace_all(s, "\\ ", " ");
    replace_all(s, "~", " ");
    replace_all(s, "{,}", ",");
    replace_all(s, "\\dfrac", "\\frac");
    replace_all(s, "\\tfrac", "\\frac");
    drop_left_right(s);
    for (const char* deg : {"^{\\circ}", "^\\circ", "\\degree", "\xC2\xB0"}) replace_all(s, deg, "");
    for (const char* sym : {"\\%", "%", "\\$", "$"}) replace_all(s, sym, "");
    handle_text_commands(s);
    replace_all(s, " ", "");
    if (!s.empty() && s.back() == '.') s.pop_back();  // sentence end
    s = brace_macro_args(s);
    drop_short_lhs(s);
    add_leading_zeros(s);
    canonical_number(s);
    slash_to_frac(s);
    if (s.size() == 3 && s[0] == '(' && s[2] == ')' && is_alpha(s[1])) s = s.substr(1, 1);  // "(C)" -> "C"
    return s;
}

MatchResult match_number_after_answer(const std::string& output, const std::string& reference) {
    MatchResult r;
    const auto tail = after_last_answer(output);
    if (!tail) return r;
    const auto got = last_number(*tail);
    if (!got) return r;
    r.extracted = *got;
    const auto want = last_number(reference);
    r.correct = want && numbers_equal(*got, *want);
    return r;
}

MatchResult match_last_number(const std::string& output, const std::string& reference) {
    MatchResult r;
    const auto got = last_number(output);
    if (!got) return r;
    r.extracted = *got;
    const auto want = last_number(reference);
    r.correct = want && numbers_equal(*got, *want);
    return r;
}

MatchResult match_boxed(const std::string& output, const std::string& reference) {
    MatchResult r;
    const auto got = last_boxed(output);
    if (!got) return r;
    r.extracted = *got;
    const std::string a = normalize_latex_answer(*got), b = normalize_latex_answer(reference);
    r.correct = !a.empty() && a == b;
    return r;
}

MatchResult match_boxed_number(const std::string& output, const std::string& reference) {
    MatchResult r = match_boxed(output, reference);
    if (r.extracted.empty() || r.correct) return r;
    // A plain number once "$", "%" and thousands commas are gone ("\\$1,234.50" -> 1234.5): compare the
    // values. Anything else ("x+1", "18 or 19") stays a text comparison.
    std::string a = normalize_latex_answer(r.extracted), digits;
    for (char ch : a)
        if (ch != '$' && ch != '%' && ch != ',') digits += ch;
    const auto num = last_number(digits), want = last_number(reference);
    r.correct = num && want && *num == digits && numbers_equal(*num, *want);
    return r;
}

MatchResult match_choice_letter(const std::string& output, const std::string& reference) {
    MatchResult r;
    const auto tail = after_last_answer(output);
    std::optional<char> letter;
    if (!tail) {
        // No "Answer:" line: Qwen2.5 often ends "Therefore, the answer is: C" instead. Only a letter right
        // after the last "answer is" counts there; the prose before it never does.
        const auto prose = after_last_answer_is(output);
        if (prose) letter = leading_letter(*prose);
    } else {
        letter = leading_letter(*tail);
    }
    if (tail && !letter) {
        // "Answer: the correct option is (B) library": a standalone capital A-E on the answer's first line.
        const std::string t = trim(*tail);
        const std::string line = t.substr(0, t.find('\n'));
        for (size_t i = 0; i < line.size() && !letter; ++i) {
            const char c = line[i];
            const bool alone =
                (i == 0 || !is_alpha(line[i - 1])) && (i + 1 == line.size() || !is_alpha(line[i + 1]));
            if (c >= 'A' && c <= 'E' && alone) letter = c;
        }
    }
    if (!letter) return r;
    r.extracted = std::string(1, *letter);
    const auto want = leading_letter(reference);
    r.correct = want && *want == *letter;
    return r;
}

MatchResult match_answer(MatcherKind kind, const std::string& output, const std::string& reference) {
    switch (kind) {
        case MatcherKind::NumberAfterAnswer:
            return match_number_after_answer(output, reference);
        case MatcherKind::Boxed:
            return match_boxed(output, reference);
        case MatcherKind::ChoiceLetter:
            return match_choice_letter(output, reference);
        case MatcherKind::LastNumber:
            return match_last_number(output, reference);
        case MatcherKind::BoxedNumber:
            return match_boxed_number(output, reference);
    }
    return {};
}

}  // namespace kvlens
