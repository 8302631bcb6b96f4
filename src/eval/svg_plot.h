// Report output without dependencies: SVG line plots (ROC, precision/recall, accuracy vs. budget ...) and
// Markdown tables. Output is deterministic and locale-independent (same input -> same bytes, numbers with a
// fixed number of decimals), so that reports committed or compared across runs diff cleanly.
#pragma once

#include <cmath>
#include <string>
#include <vector>

namespace kvlens {

struct Series {
    std::string label;      // legend text (empty: "series N")
    std::vector<double> x;  // same length as y; a non-finite x or y skips the point and breaks the line
    std::vector<double> y;
    std::string color;  // any SVG colour ("#0072B2", "red"); empty: the next palette colour
    bool dashed = false;
    bool markers = false;  // a dot at every visible point
};

struct PlotSpec {
    std::string title, x_label, y_label;
    // NAN: automatic, widened to the nearest ticks around the data. Either end can be fixed alone.
    double x_min = NAN, x_max = NAN, y_min = NAN, y_max = NAN;
    int width = 640, height = 480;  // pixels; the SVG also carries a matching viewBox, so it scales
    bool diagonal = false;          // grey dashed y = x reference line (ROC chance level)
    bool legend = true;
};

// The SVG document (UTF-8 text with an XML declaration). Each series with a visible segment becomes one
// <path class="series">; its markers a <g class="markers">. Lines are clipped to the plot area.
// Throws Error (naming the plot by its title) on x/y length mismatch, an empty or inverted fixed range,
// or a size too small to hold the axes.
std::string svg_line_plot(const PlotSpec& spec, const std::vector<Series>& series);

// Tick positions for [lo, hi]: the multiples of a step of 1, 2 or 5 x 10^k that lie inside the range, with
// about max_ticks of them (0..1 -> 0, 0.2, ..., 1; 0..37 -> 0, 10, 20, 30). Requires lo < hi, both finite.
std::vector<double> nice_ticks(double lo, double hi, int max_ticks = 6);

// & < > " ' as XML entities.
std::string xml_escape(const std::string& s);

// Fixed-point text with `decimals` digits (0..17), independent of the C locale; NaN -> "n/a",
// infinities -> "inf" / "-inf", a value that rounds to zero never prints as "-0".
std::string fmt(double v, int decimals);

// A GitHub-flavoured Markdown table, columns padded to equal width (counted in UTF-8 code points).
// Columns whose cells are all numbers (or empty / "n/a" / "-") are right-aligned, the rest left-aligned.
// '|' in a cell is escaped, newlines become spaces. Short rows are padded; a row longer than the header,
// or an empty header, throws Error.
std::string markdown_table(const std::vector<std::string>& header,
                           const std::vector<std::vector<std::string>>& rows);

// Writes text to path, replacing the file. Throws Error naming the path on failure.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace kvlens
