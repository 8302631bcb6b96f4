// SVG plot writer and Markdown table helper. SvgSamples.Write also writes sample plots (+ .expect files) to
// $KVLENS_SVG_OUT for tests/python/test_svg_wellformed.py, which parses them as XML.
#include "eval/svg_plot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "util/error.h"

namespace kvlens {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Series with every field given: aggregate init with fewer would warn under -Wmissing-field-initializers.
Series S(std::string label, std::vector<double> x, std::vector<double> y, std::string color = "",
         bool dashed = false, bool markers = false) {
    return {std::move(label), std::move(x), std::move(y), std::move(color), dashed, markers};
}

std::vector<std::string> matches(const std::string& text, const std::string& pattern, int group = 1) {
    std::vector<std::string> out;
    const std::regex re(pattern);
    for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
        out.push_back((*it)[group].str());
    return out;
}

struct Area {
    double l, t, w, h;
};

Area plot_area(const std::string& svg) {
    std::smatch m;
    const std::regex re(
        "<rect class=\"plot-area\" x=\"([-0-9.]+)\" y=\"([-0-9.]+)\" width=\"([-0-9.]+)\" "
        "height=\"([-0-9.]+)\"");
    EXPECT_TRUE(std::regex_search(svg, m, re)) << svg;
    return {std::stod(m[1]), std::stod(m[2]), std::stod(m[3]), std::stod(m[4])};
}

std::vector<std::string> series_paths(const std::string& svg) {
    return matches(svg, "<path class=\"series\" d=\"([^\"]*)\"");
}

// All coordinate pairs of a path's d attribute.
std::vector<std::pair<double, double>> path_points(const std::string& d) {
    std::vector<std::pair<double, double>> pts;
    for (const std::string& p : matches(d, "[ML]([-0-9.]+ [-0-9.]+)")) {
        std::istringstream in(p);
        double x, y;
        in >> x >> y;
        pts.push_back({x, y});
    }
    return pts;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

TEST(XmlEscape, EntitiesControlCharsAndBadUtf8) {
    EXPECT_EQ(xml_escape("a & b <c> \"d\" 'e'"), "a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos;");
    EXPECT_EQ(xml_escape("AUROC \xE2\x89\xA5 0.9 \xC3\xA9 \xF0\x9F\x98\x80"),
              "AUROC \xE2\x89\xA5 0.9 \xC3\xA9 \xF0\x9F\x98\x80");
    EXPECT_EQ(xml_escape("a\x01"
                         "b\nc"),
              "a b c");
    EXPECT_EQ(xml_escape("x\xFFy"), "x\xEF\xBF\xBDy");              // stray byte
    EXPECT_EQ(xml_escape("x\xC3"), "x\xEF\xBF\xBD");                // truncated sequence
    EXPECT_EQ(xml_escape("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong '/'
}

TEST(Fmt, FixedDecimalsNoNegativeZero) {
    EXPECT_EQ(fmt(0.5, 2), "0.50");
    EXPECT_EQ(fmt(1234.5678, 0), "1235");
    EXPECT_EQ(fmt(-3.14159, 3), "-3.142");
    EXPECT_EQ(fmt(-0.001, 2), "0.00");
    EXPECT_EQ(fmt(-0.0, 1), "0.0");
    EXPECT_EQ(fmt(1e20, 1), "100000000000000000000.0");
    EXPECT_EQ(fmt(kNaN, 3), "n/a");
    EXPECT_EQ(fmt(kInf, 3), "inf");
    EXPECT_EQ(fmt(-kInf, 3), "-inf");
}

void expect_ticks(double lo, double hi, const std::vector<double>& want) {
    const std::vector<double> got = nice_ticks(lo, hi);
    ASSERT_EQ(got.size(), want.size()) << lo << ".." << hi;
    for (size_t i = 0; i < want.size(); ++i)
        EXPECT_NEAR(got[i], want[i], 1e-12) << lo << ".." << hi << " #" << i;
}

TEST(NiceTicks, KnownRanges) {
    expect_ticks(0, 1, {0, 0.2, 0.4, 0.6, 0.8, 1});
    expect_ticks(0, 37, {0, 10, 20, 30});
    expect_ticks(0, 100, {0, 20, 40, 60, 80, 100});
    expect_ticks(-3, 3, {-2, 0, 2});
    expect_ticks(0.001, 0.0042, {0.001, 0.002, 0.003, 0.004});
    expect_ticks(-1, -0.5, {-1, -0.9, -0.8, -0.7, -0.6, -0.5});
    EXPECT_TRUE(nice_ticks(1, 1).empty());
    EXPECT_TRUE(nice_ticks(1, 0).empty());
    EXPECT_TRUE(nice_ticks(0, kNaN).empty());
    EXPECT_TRUE(nice_ticks(-1e308, 1e308).empty());  // the span overflows
}

TEST(NiceTicks, StepsAreOneTwoFiveAndCountBounded) {
    // Deterministic pseudo-random ranges over many magnitudes.
    unsigned state = 12345;
    const auto rnd = [&] {
        state = state * 1103515245u + 12345u;
        return (state >> 8) / double(1u << 24);
    };
    for (int i = 0; i < 2000; ++i) {
        const double scale = std::pow(10.0, std::floor(rnd() * 16) - 8);
        const double lo = (rnd() - 0.5) * 10 * scale, hi = lo + (0.01 + rnd() * 10) * scale;
        const std::vector<double> t = nice_ticks(lo, hi);
        ASSERT_GE(t.size(), 2u) << lo << ".." << hi;
        ASSERT_LE(t.size(), 6u) << lo << ".." << hi;
        const double step = t[1] - t[0];
        const double mant = step / std::pow(10.0, std::floor(std::log10(step) + 1e-9));
        EXPECT_TRUE(std::abs(mant - 1) < 1e-6 || std::abs(mant - 2) < 1e-6 || std::abs(mant - 5) < 1e-6)
            << lo << ".." << hi << " step " << step;
        EXPECT_GE(t.front(), lo - 1e-9 * scale);
        EXPECT_LE(t.back(), hi + 1e-9 * scale);
    }
}

TEST(SvgLinePlot, DocumentBasics) {
    PlotSpec spec;
    spec.title = "ROC";
    spec.width = 500;
    spec.height = 400;
    const std::string svg = svg_line_plot(spec, {S("a", {0, 1}, {0, 1})});
    EXPECT_EQ(
        svg.rfind("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"", 0),
        0u);
    EXPECT_NE(svg.find("width=\"500\" height=\"400\" viewBox=\"0 0 500 400\""), std::string::npos);
    EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
    EXPECT_EQ(svg.find("nan"), std::string::npos);
    EXPECT_EQ(svg.find("inf"), std::string::npos);
}

TEST(SvgLinePlot, KnownPointsMapToPixels) {
    PlotSpec spec;
    spec.x_min = 0, spec.x_max = 10, spec.y_min = 0, spec.y_max = 100;
    const std::string svg = svg_line_plot(spec, {S("s", {2.5, 5, 10}, {25, 50, 0})});
    const Area a = plot_area(svg);
    const std::vector<std::string> paths = series_paths(svg);
    ASSERT_EQ(paths.size(), 1u);
    const std::string want = "M" + fmt(a.l + 0.25 * a.w, 2) + " " + fmt(a.t + 0.75 * a.h, 2) + " L" +
                             fmt(a.l + 0.5 * a.w, 2) + " " + fmt(a.t + 0.5 * a.h, 2) + " L" +
                             fmt(a.l + a.w, 2) + " " + fmt(a.t + a.h, 2);
    EXPECT_EQ(paths[0], want);
}

TEST(SvgLinePlot, AutoRangeWidensToTicks) {
    PlotSpec spec;
    const std::string svg = svg_line_plot(spec, {S("s", {0, 37}, {0.03, 0.97})});
    const Area a = plot_area(svg);
    // x axis 0..40 (step 10), y axis 0..1 (step 0.2): (37, 0.97) lands at 37/40 and 0.97 of the area.
    const auto pts = path_points(series_paths(svg).at(0));
    ASSERT_EQ(pts.size(), 2u);
    EXPECT_NEAR(pts[1].first, a.l + 37.0 / 40 * a.w, 0.006);
    EXPECT_NEAR(pts[1].second, a.t + (1 - 0.97) * a.h, 0.006);
    EXPECT_NEAR(pts[0].second, a.t + (1 - 0.03) * a.h, 0.006);
    for (const char* label : {">0<", ">10<", ">20<", ">30<", ">40<", ">0.0<", ">0.2<", ">1.0<"})
        EXPECT_NE(svg.find(label), std::string::npos) << label;
}

TEST(SvgLinePlot, NonFiniteBreaksTheLine) {
    PlotSpec spec;
    spec.x_min = 0, spec.x_max = 6, spec.y_min = 0, spec.y_max = 6;
    const std::string svg = svg_line_plot(
        spec, {S("s", {0, 1, 2, 3, 4, 5, 6}, {0, 1, kNaN, 3, 4, kInf, 6}), S("lonely", {1}, {1})});
    const std::vector<std::string> paths = series_paths(svg);
    ASSERT_EQ(paths.size(), 1u);  // a single point draws no line
    EXPECT_EQ(matches(paths[0], "M").size(), 2u) << paths[0];
    EXPECT_EQ(path_points(paths[0]).size(), 4u) << paths[0];  // (0,0)-(1,1) and (3,3)-(4,4); 6 is alone
}

TEST(SvgLinePlot, LinesAreClippedToThePlotArea) {
    PlotSpec spec;
    spec.x_min = 0, spec.x_max = 1, spec.y_min = 0, spec.y_max = 1;
    const std::string svg =
        svg_line_plot(spec, {S("through", {-1, 0.5, 2}, {0.5, 0.5, 0.5}), S("outside", {2, 3}, {2, 3}),
                             S("crossing", {-0.5, 1.5}, {-0.5, 1.5}), S("huge", {0.5, 1e308}, {0.5, 1e308})});
    const Area a = plot_area(svg);
    const std::vector<std::string> paths = series_paths(svg);
    ASSERT_EQ(paths.size(), 3u);  // "outside" draws nothing
    for (const std::string& d : paths)
        for (const auto& [x, y] : path_points(d)) {
            EXPECT_GE(x, a.l - 0.006) << d;
            EXPECT_LE(x, a.l + a.w + 0.006) << d;
            EXPECT_GE(y, a.t - 0.006) << d;
            EXPECT_LE(y, a.t + a.h + 0.006) << d;
        }
    // "through" enters at the left edge and leaves at the right one, without a break in between.
    EXPECT_EQ(paths[0], "M" + fmt(a.l, 2) + " " + fmt(a.t + a.h / 2, 2) + " L" + fmt(a.l + a.w / 2, 2) + " " +
                            fmt(a.t + a.h / 2, 2) + " L" + fmt(a.l + a.w, 2) + " " + fmt(a.t + a.h / 2, 2));
    // "crossing" is the diagonal of the area, corner to corner.
    EXPECT_EQ(paths[1],
              "M" + fmt(a.l, 2) + " " + fmt(a.t + a.h, 2) + " L" + fmt(a.l + a.w, 2) + " " + fmt(a.t, 2));
}

TEST(SvgLinePlot, LegendPaletteDashesMarkers) {
    PlotSpec spec;
    spec.diagonal = true;
    const std::string svg = svg_line_plot(
        spec, {S("KV-CoE <ours> & \"baseline\"", {0, 0.1, 1}, {0, 0.8, 1}), S("", {0, 1}, {0, 1}, "", true),
               S("marked", {0, 0.5, 1}, {0, 0.6, 1}, "purple", false, true), S("empty", {}, {})});
    EXPECT_NE(svg.find(">KV-CoE &lt;ours&gt; &amp; &quot;baseline&quot;</text>"), std::string::npos);
    EXPECT_NE(svg.find(">series 2</text>"), std::string::npos);
    EXPECT_NE(svg.find(">marked</text>"), std::string::npos);
    EXPECT_NE(svg.find(">empty</text>"), std::string::npos);
    const std::vector<std::string> strokes =
        matches(svg, "<path class=\"series\" d=\"[^\"]*\" fill=\"none\" stroke=\"([^\"]*)\"");
    EXPECT_EQ(strokes, (std::vector<std::string>{"#0072B2", "#D55E00", "purple"}));
    EXPECT_EQ(matches(svg, "stroke-dasharray=\"7 4\"", 0).size(), 2u);  // dashed path + its legend sample
    EXPECT_EQ(matches(svg, "<g class=\"markers\"[^>]*>((\\s*<circle[^>]*/>)*)").size(), 1u);
    EXPECT_EQ(matches(svg, "<circle cx=\"[-0-9.]+\" cy=\"[-0-9.]+\" r=\"3\"/>", 0).size(), 3u);
    EXPECT_NE(svg.find("<path class=\"diagonal\""), std::string::npos);
    // ROC curves hug the top-left, so the legend goes bottom-right (its box's right edge beyond mid-plot).
    const Area a = plot_area(svg);
    const auto box = matches(svg, "<g class=\"legend\">\n<rect x=\"([-0-9.]+)\" y=\"([-0-9.]+)\"", 2);
    ASSERT_EQ(box.size(), 1u);
    EXPECT_GT(std::stod(box[0]), a.t + a.h / 2);

    spec.legend = false;
    EXPECT_EQ(svg_line_plot(spec, {S("a", {0, 1}, {0, 1})}).find("class=\"legend\""), std::string::npos);
}

TEST(SvgLinePlot, EmptyAndDegenerateInputs) {
    PlotSpec spec;
    const std::string none = svg_line_plot(spec, {});
    EXPECT_TRUE(series_paths(none).empty());
    EXPECT_EQ(none.find("class=\"legend\""), std::string::npos);
    EXPECT_NE(none.find(">1.0<"), std::string::npos);  // default 0..1 axes

    const std::string flat = svg_line_plot(spec, {S("flat", {0, 1, 2}, {5, 5, 5})});
    EXPECT_EQ(series_paths(flat).size(), 1u);
    EXPECT_NE(flat.find(">5.0<"), std::string::npos);

    spec.x_min = 10;  // data entirely left of the one fixed end
    EXPECT_TRUE(series_paths(svg_line_plot(spec, {S("s", {0, 1}, {0, 1})})).empty());
}

TEST(SvgLinePlot, Deterministic) {
    PlotSpec spec;
    spec.title = "t";
    std::vector<Series> s = {S("a", {0, 0.3, 0.7, 1}, {0.1, 0.5, kNaN, 0.9}),
                             S("b", {0, 1}, {1, 0}, "", true, true)};
    EXPECT_EQ(svg_line_plot(spec, s), svg_line_plot(spec, s));
}

TEST(SvgLinePlot, ErrorsNameTheInput) {
    PlotSpec spec;
    spec.title = "ROC of gsm8k";
    try {
        svg_line_plot(spec, {S("kv-coe", {0, 1, 2}, {0, 1})});
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("plot 'ROC of gsm8k': series 'kv-coe' has 3 x values but 2 y"),
                  std::string::npos)
            << e.what();
    }
    PlotSpec inverted = spec;
    inverted.x_min = 1, inverted.x_max = 0;
    EXPECT_THROW(svg_line_plot(inverted, {}), Error);
    PlotSpec infinite = spec;
    infinite.y_max = kInf;
    EXPECT_THROW(svg_line_plot(infinite, {}), Error);
    EXPECT_THROW(svg_line_plot(spec, {S("wide", {0, 1}, {-1e308, 1e308})}), Error);
    PlotSpec tiny = spec;
    tiny.width = 60;
    EXPECT_THROW(svg_line_plot(tiny, {}), Error);
    tiny.width = 0;
    EXPECT_THROW(svg_line_plot(tiny, {}), Error);
}

TEST(MarkdownTable, AlignedColumns) {
    const std::string t =
        markdown_table({"method", "AUROC", "tokens"},
                       {{"KV-CoE", "0.812", "1234"}, {"a|b", "n/a", ""}, {"\xC3\xA9t\xC3\xA9", "0.7"}});
    EXPECT_EQ(t,
              "| method | AUROC | tokens |\n"
              "| ------ | ----: | -----: |\n"
              "| KV-CoE | 0.812 |   1234 |\n"
              "| a\\|b   |   n/a |        |\n"
              "| \xC3\xA9t\xC3\xA9    |   0.7 |        |\n");
}

TEST(MarkdownTable, NumericDetectionAndErrors) {
    const std::string t = markdown_table({"x", "y"}, {{"-1.5e-3", "12%"}, {"+7", "3 ms"}});
    EXPECT_NE(t.find("| ------: | ---- |"), std::string::npos) << t;
    EXPECT_NE(markdown_table({"a"}, {}).find("| a   |\n| --- |\n"), std::string::npos);
    EXPECT_THROW(markdown_table({}, {}), Error);
    try {
        markdown_table({"a", "b"}, {{"1", "2"}, {"1", "2", "3"}});
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("row 2 has 3 cells"), std::string::npos) << e.what();
    }
}

TEST(WriteTextFile, WritesAndNamesThePathOnFailure) {
    const std::string path = testing::TempDir() + "kvlens_svg_plot_write.txt";
    write_text_file(path, "one\ntwo\n");
    EXPECT_EQ(read_file(path), "one\ntwo\n");
    const std::string bad = testing::TempDir() + "no/such/dir/x.svg";
    try {
        write_text_file(bad, "x");
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'" + bad + "'"), std::string::npos) << e.what();
    }
}

// Sample plots for the Python XML check: <name>.svg, and <name>.expect with the number of series paths on
// the first line, then the legend labels, one per line (unescaped).
TEST(SvgSamples, Write) {
    const char* env = std::getenv("KVLENS_SVG_OUT");
    const std::string dir = env && *env ? std::string(env) + "/" : testing::TempDir();

    struct Sample {
        std::string name;
        PlotSpec spec;
        std::vector<Series> series;
        int paths;
    };
    std::vector<Sample> samples;

    {
        Sample s{"roc", {}, {}, 3};
        s.spec.title = "ROC: correct vs. wrong answers";
        s.spec.x_label = "false positive rate";
        s.spec.y_label = "true positive rate";
        s.spec.x_min = 0, s.spec.x_max = 1, s.spec.y_min = 0, s.spec.y_max = 1;
        s.spec.width = s.spec.height = 480;
        s.spec.diagonal = true;
        std::vector<double> fpr, tpr_a, tpr_b, tpr_c;
        for (int i = 0; i <= 50; ++i) {
            const double f = i / 50.0;
            fpr.push_back(f);
            tpr_a.push_back(1 - std::pow(1 - f, 4));
            tpr_b.push_back(std::pow(f, 0.5));
            tpr_c.push_back(std::pow(f, 0.8));
        }
        s.series = {S("KV-CoE (AUROC 0.80)", fpr, tpr_a),
                    S("entropy <baseline> & \"p(true)\"", fpr, tpr_b, "", true),
                    S("self-certainty", fpr, tpr_c)};
        samples.push_back(s);
    }
    {
        Sample s{"accuracy_vs_budget", {}, {}, 2};
        s.spec.title = "Accuracy vs. token budget";
        s.spec.x_label = "generated tokens";
        s.spec.y_label = "accuracy (%)";
        s.series = {
            S("fast/slow router", {128, 256, 512, 1024, 2048}, {41.5, 52.25, 60.1, kNaN, 66.8}, "", false,
              true),
            S("always think", {128, 256, 512, 1024, 2048}, {30.0, 45.0, 58.0, 64.0, 67.5}, "", true, true),
            S("no data yet", {}, {})};
        samples.push_back(s);
    }
    {
        Sample s{"clipped_negative", {}, {}, 1};
        s.spec.title = "Clipped & negative";
        s.spec.y_min = -1, s.spec.y_max = 1;
        std::vector<double> x, y;
        for (int i = 0; i <= 80; ++i) {
            x.push_back(-2 + i * 0.05);
            y.push_back(1.5 * std::sin(x.back() * 2));
        }
        s.series = {S("1.5 sin(2x)", x, y), S("all NaN", {0, 1}, {kNaN, kNaN})};
        samples.push_back(s);
    }
    samples.push_back({"no_series", {}, {}, 0});

    for (const Sample& s : samples) {
        write_text_file(dir + s.name + ".svg", svg_line_plot(s.spec, s.series));
        std::string expect = std::to_string(s.paths) + "\n";
        for (size_t k = 0; k < s.series.size(); ++k)
            expect +=
                (s.series[k].label.empty() ? "series " + std::to_string(k + 1) : s.series[k].label) + "\n";
        write_text_file(dir + s.name + ".expect", expect);
        EXPECT_EQ(series_paths(read_file(dir + s.name + ".svg")).size(), static_cast<size_t>(s.paths))
            << s.name;
    }
}

}  // namespace
}  // namespace kvlens
