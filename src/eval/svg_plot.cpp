#include "eval/svg_plot.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <limits>

#include "util/error.h"
#include "util/utf8.h"

namespace kvlens {

namespace {

// Okabe-Ito, ordered for a white background (yellow last: it is faint on white).
const std::array<const char*, 8> kPalette = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                             "#E69F00", "#56B4E9", "#000000", "#F0E442"};

// Rough advance of a 12 px sans-serif glyph, slightly generous: text metrics are unknown here, and the
// legend box and margins must hold the text in any font the viewer picks.
constexpr double kCharW = 7.0;
constexpr int kFont = 12;

std::string plot_name(const PlotSpec& spec) {
    return spec.title.empty() ? std::string("plot (untitled)") : "plot '" + spec.title + "'";
}

// Pixel coordinates: 2 decimals are finer than any screen and keep files small and stable.
std::string px(double v) {
    return fmt(v, 2);
}

double nice_step(double lo, double hi, int max_ticks) {
    const double raw = (hi - lo) / std::max(1, max_ticks - 1);
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double norm = raw / mag;
    // Smallest of 1, 2, 5, 10 that is >= norm; the tolerance keeps 2.0000000001 from jumping to 5.
    for (double c : {1.0, 2.0, 5.0})
        if (norm <= c * (1 + 1e-9)) return c * mag;
    return 10 * mag;
}

int step_decimals(double step) {
    return std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 17);
}

// One axis: resolves the automatic ends from the data and widens them to multiples of the tick step.
struct Axis {
    double lo = 0, hi = 1;
    std::vector<double> ticks;
    int decimals = 0;
};

Axis make_axis(const PlotSpec& spec, char name, double fixed_lo, double fixed_hi, double data_lo,
               double data_hi) {
    for (double v : {fixed_lo, fixed_hi})
        if (std::isinf(v)) throw Error(plot_name(spec) + ": " + name + " range end is infinite");
    const bool auto_lo = std::isnan(fixed_lo), auto_hi = std::isnan(fixed_hi);
    if (!auto_lo && !auto_hi && !(fixed_lo < fixed_hi))
        throw Error(plot_name(spec) + ": " + name + " range [" + fmt(fixed_lo, 6) + ", " + fmt(fixed_hi, 6) +
                    "] is empty or inverted");
    const bool have_data = data_lo <= data_hi;
    Axis a;
    a.lo = !auto_lo ? fixed_lo : have_data ? data_lo : 0.0;
    a.hi = !auto_hi ? fixed_hi : have_data ? data_hi : 1.0;
    if (!(a.lo < a.hi)) {
        // Constant data, or data entirely beyond the one fixed end: open up a span around what is known.
        const double c = auto_lo ? a.hi : a.lo;
        const double d = c == 0 ? 1.0 : std::abs(c) * 0.1;
        if (auto_lo && auto_hi) {
            a.lo = c - d;
            a.hi = c + d;
        } else if (auto_lo) {
            a.lo = a.hi - 2 * d;
        } else {
            a.hi = a.lo + 2 * d;
        }
    }
    if (!std::isfinite(a.hi - a.lo))
        throw Error(plot_name(spec) + ": " + name + " values span more than a double can hold");
    // Snap the automatic ends outward to the tick step; the wider range may call for a coarser step, so
    // repeat until it is stable (two rounds in practice).
    for (int round = 0; round < 4; ++round) {
        const double step = nice_step(a.lo, a.hi, 6);
        const double lo = auto_lo ? std::floor(a.lo / step + 1e-9) * step : a.lo;
        const double hi = auto_hi ? std::ceil(a.hi / step - 1e-9) * step : a.hi;
        if (lo == a.lo && hi == a.hi) break;
        a.lo = lo;
        a.hi = hi;
    }
    a.ticks = nice_ticks(a.lo, a.hi, 6);
    a.decimals = step_decimals(nice_step(a.lo, a.hi, 6));
    return a;
}

struct Pt {
    double x, y;
};
struct Segment {
    Pt a, b;
};
struct Rect {
    double l, t, r, b;
    bool contains(Pt p) const {
        return p.x >= l - 1e-9 && p.x <= r + 1e-9 && p.y >= t - 1e-9 && p.y <= b + 1e-9;
    }
};

// Liang-Barsky: clips p->q to the rectangle; t0/t1 are the visible fraction's ends along the segment.
bool clip_segment(Pt p, Pt q, const Rect& r, double& t0, double& t1) {
    const double dx = q.x - p.x, dy = q.y - p.y;
    const double ps[4] = {-dx, dx, -dy, dy};
    const double qs[4] = {p.x - r.l, r.r - p.x, p.y - r.t, r.b - p.y};
    t0 = 0;
    t1 = 1;
    for (int i = 0; i < 4; ++i) {
        if (ps[i] == 0) {
            if (qs[i] < 0) return false;
            continue;
        }
        const double t = qs[i] / ps[i];
        if (ps[i] < 0) {
            if (t > t1) return false;
            t0 = std::max(t0, t);
        } else {
            if (t < t0) return false;
            t1 = std::min(t1, t);
        }
    }
    return t0 <= t1;
}

// Builds the path data of a polyline broken at non-finite points and clipped to `area`; appends the drawn
// segments to `drawn` (for legend placement).
std::string clipped_path(const std::vector<Pt>& pts, const std::vector<bool>& ok, const Rect& area,
                         std::vector<Segment>& drawn) {
    std::string d;
    std::string pen;  // last emitted point, formatted: consecutive equal points are dropped
    bool pen_at_prev = false;
    for (size_t i = 1; i < pts.size(); ++i) {
        if (!ok[i] || !ok[i - 1]) {
            pen_at_prev = false;
            continue;
        }
        double t0, t1;
        if (!clip_segment(pts[i - 1], pts[i], area, t0, t1)) {
            pen_at_prev = false;
            continue;
        }
        const Pt p = pts[i - 1], q = pts[i];
        const Pt a{p.x + t0 * (q.x - p.x), p.y + t0 * (q.y - p.y)};
        const Pt b{p.x + t1 * (q.x - p.x), p.y + t1 * (q.y - p.y)};
        drawn.push_back({a, b});
        if (!pen_at_prev || t0 > 0) {
            pen = px(a.x) + " " + px(a.y);
            d += (d.empty() ? "M" : " M") + pen;
        }
        const std::string next = px(b.x) + " " + px(b.y);
        if (next != pen) {
            d += " L" + next;
            pen = next;
        }
        pen_at_prev = t1 >= 1;
    }
    return d;
}

std::string text_elem(double x, double y, const std::string& anchor, const std::string& text,
                      const std::string& extra = "") {
    return "<text x=\"" + px(x) + "\" y=\"" + px(y) + "\" text-anchor=\"" + anchor + "\"" + extra + ">" +
           xml_escape(text) + "</text>\n";
}

std::string line_elem(double x1, double y1, double x2, double y2) {
    return "<line x1=\"" + px(x1) + "\" y1=\"" + px(y1) + "\" x2=\"" + px(x2) + "\" y2=\"" + px(y2) +
           "\"/>\n";
}

bool is_number_cell(const std::string& s) {
    size_t i = 0;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (s.compare(i, std::string::npos, "inf") == 0) return true;
    size_t digits = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
    if (i < s.size() && s[i] == '.') {
        ++i;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
    }
    if (digits == 0) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
        size_t exp_digits = 0;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++exp_digits;
        if (exp_digits == 0) return false;
    }
    if (i < s.size() && s[i] == '%') ++i;
    return i == s.size();
}

std::string md_cell(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '|') {
            out += "\\|";
        } else if (c == '\n' || c == '\r' || c == '\t') {
            out += ' ';
        } else {
            out += c;
        }
    }
    return out;
}

}  // namespace

std::string fmt(double v, int decimals) {
    if (std::isnan(v)) return "n/a";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    decimals = std::clamp(decimals, 0, 17);
    char buf[400];  // 309 integer digits + sign + point + 17 decimals fit
    const auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed, decimals);
    std::string s(buf, res.ptr);
    if (s[0] == '-' && s.find_first_not_of("-0.") == std::string::npos) s.erase(0, 1);
    return s;
}

std::vector<double> nice_ticks(double lo, double hi, int max_ticks) {
    if (!(std::isfinite(lo) && std::isfinite(hi) && lo < hi && std::isfinite(hi - lo))) return {};
    const double step = nice_step(lo, hi, std::max(2, max_ticks));
    std::vector<double> ticks;
    // Multiples k*step (not a running sum, which drifts); the tolerance keeps the ends at 0 and 1 in 0..1.
    const double k0 = std::ceil(lo / step - 1e-9), k1 = std::floor(hi / step + 1e-9);
    for (double k = k0; k <= k1 && ticks.size() < 64; ++k) {
        const double t = k * step;
        ticks.push_back(t == 0 ? 0.0 : t);  // no -0
    }
    return ticks;
}

std::string xml_escape(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            case '\'':
                out += "&apos;";
                break;
            default:
                // XML 1.0 forbids most control characters even as references, and a malformed UTF-8 byte
                // makes the whole document unreadable: replace both rather than fail on a label.
                if (c < 0x20) {
                    out += ' ';
                } else if (const size_t n = utf8_seq_len(s, i); n == 0) {
                    out += "\xEF\xBF\xBD";  // U+FFFD
                } else {
                    out.append(s, i, n);
                    i += n;
                    continue;
                }
        }
        ++i;
    }
    return out;
}

std::string svg_line_plot(const PlotSpec& spec, const std::vector<Series>& series) {
    for (const Series& s : series)
        if (s.x.size() != s.y.size())
            throw Error(plot_name(spec) + ": series '" + s.label + "' has " + std::to_string(s.x.size()) +
                        " x values but " + std::to_string(s.y.size()) + " y values");
    if (spec.width <= 0 || spec.height <= 0)
        throw Error(plot_name(spec) + ": size " + std::to_string(spec.width) + "x" +
                    std::to_string(spec.height) + " is not positive");

    // Ranges: x from all finite points, y from those inside the x range, so that a fixed x window also
    // zooms y.
    constexpr double inf = std::numeric_limits<double>::infinity();
    double xlo = inf, xhi = -inf;
    for (const Series& s : series)
        for (size_t i = 0; i < s.x.size(); ++i)
            if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
                xlo = std::min(xlo, s.x[i]);
                xhi = std::max(xhi, s.x[i]);
            }
    const Axis ax = make_axis(spec, 'x', spec.x_min, spec.x_max, xlo, xhi);
    double ylo = inf, yhi = -inf;
    for (const Series& s : series)
        for (size_t i = 0; i < s.x.size(); ++i)
            if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && s.x[i] >= ax.lo && s.x[i] <= ax.hi) {
                ylo = std::min(ylo, s.y[i]);
                yhi = std::max(yhi, s.y[i]);
            }
    const Axis ay = make_axis(spec, 'y', spec.y_min, spec.y_max, ylo, yhi);

    std::vector<std::string> ylabels, xlabels;
    size_t ylabel_chars = 1;
    for (double t : ay.ticks) {
        ylabels.push_back(fmt(t, ay.decimals));
        ylabel_chars = std::max(ylabel_chars, ylabels.back().size());
    }
    for (double t : ax.ticks) xlabels.push_back(fmt(t, ax.decimals));

    // Margins sized to their contents: title, y tick labels + y title, x tick labels + x title, and room for
    // half of the last x tick label on the right.
    const double W = spec.width, H = spec.height;
    const double top = spec.title.empty() ? 14 : 38;
    const double left = std::ceil(8 + (spec.y_label.empty() ? 0 : 20) + ylabel_chars * kCharW + 10);
    const double bottom = 5 + 5 + kFont + (spec.x_label.empty() ? 0 : 22) + 8;
    const double right =
        std::ceil(std::max(16.0, (xlabels.empty() ? 0 : xlabels.back().size()) * kCharW / 2 + 6));
    const Rect area{left, top, W - right, H - bottom};
    if (area.r - area.l < 40 || area.b - area.t < 40)
        throw Error(plot_name(spec) + ": size " + std::to_string(spec.width) + "x" +
                    std::to_string(spec.height) + " is too small for the axes");
    const double pw = area.r - area.l, ph = area.b - area.t;

    // Normalised coordinates are bounded before scaling, so that an absurd value (1e308 on a 0..1 axis)
    // cannot overflow to inf; the error in the direction of such a clipped segment is far below a pixel.
    const auto to_px = [&](double x, double y) {
        const double u = std::clamp((x - ax.lo) / (ax.hi - ax.lo), -1e6, 1e6);
        const double v = std::clamp((y - ay.lo) / (ay.hi - ay.lo), -1e6, 1e6);
        return Pt{area.l + u * pw, area.b - v * ph};
    };

    std::string o;
    o += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    o += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(spec.width) + "\" height=\"" +
         std::to_string(spec.height) + "\" viewBox=\"0 0 " + std::to_string(spec.width) + " " +
         std::to_string(spec.height) + "\" font-family=\"sans-serif\" font-size=\"" + std::to_string(kFont) +
         "\">\n";
    if (!spec.title.empty()) o += "<title>" + xml_escape(spec.title) + "</title>\n";
    o += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";

    // Grid, frame, ticks and their labels.
    o += "<g class=\"grid\" stroke=\"#e6e6e6\" stroke-width=\"1\">\n";
    for (double t : ax.ticks) {
        const double x = to_px(t, 0).x;
        o += line_elem(x, area.t, x, area.b);
    }
    for (double t : ay.ticks) {
        const double y = to_px(0, t).y;
        o += line_elem(area.l, y, area.r, y);
    }
    o += "</g>\n";
    o += "<rect class=\"plot-area\" x=\"" + px(area.l) + "\" y=\"" + px(area.t) + "\" width=\"" + px(pw) +
         "\" height=\"" + px(ph) + "\" fill=\"none\" stroke=\"#333333\" stroke-width=\"1\"/>\n";
    o += "<g class=\"ticks\" stroke=\"#333333\" stroke-width=\"1\">\n";
    for (double t : ax.ticks) {
        const double x = to_px(t, 0).x;
        o += line_elem(x, area.b, x, area.b + 5);
    }
    for (double t : ay.ticks) {
        const double y = to_px(0, t).y;
        o += line_elem(area.l - 5, y, area.l, y);
    }
    o += "</g>\n";
    o += "<g class=\"tick-labels\" fill=\"#333333\">\n";
    for (size_t i = 0; i < ax.ticks.size(); ++i)
        o += text_elem(to_px(ax.ticks[i], 0).x, area.b + 5 + 3 + kFont, "middle", xlabels[i]);
    // +4: approximate vertical centring on the tick (dominant-baseline is not honoured everywhere).
    for (size_t i = 0; i < ay.ticks.size(); ++i)
        o += text_elem(area.l - 5 - 4, to_px(0, ay.ticks[i]).y + 4, "end", ylabels[i]);
    o += "</g>\n";

    if (!spec.title.empty())
        o += text_elem(W / 2, 24, "middle", spec.title,
                       " class=\"title\" font-size=\"16\" font-weight=\"bold\"");
    if (!spec.x_label.empty())
        o += text_elem(area.l + pw / 2, H - 10, "middle", spec.x_label, " class=\"x-label\"");
    if (!spec.y_label.empty()) {
        const double cy = area.t + ph / 2;
        o += "<text class=\"y-label\" text-anchor=\"middle\" transform=\"translate(20 " + px(cy) +
             ") rotate(-90)\">" + xml_escape(spec.y_label) + "</text>\n";
    }

    std::vector<Segment> drawn;  // everything drawn in the plot area, for placing the legend
    if (spec.diagonal) {
        const double lo = std::min(ax.lo, ay.lo), hi = std::max(ax.hi, ay.hi);
        const std::string d = clipped_path({to_px(lo, lo), to_px(hi, hi)}, {true, true}, area, drawn);
        if (!d.empty())
            o += "<path class=\"diagonal\" d=\"" + d +
                 "\" fill=\"none\" stroke=\"#999999\" stroke-width=\"1\" stroke-dasharray=\"4 4\"/>\n";
    }

    std::vector<std::string> colors;
    size_t next_palette = 0;
    for (const Series& s : series)
        colors.push_back(s.color.empty() ? kPalette[next_palette++ % kPalette.size()] : s.color);

    for (size_t k = 0; k < series.size(); ++k) {
        const Series& s = series[k];
        std::vector<Pt> pts(s.x.size());
        std::vector<bool> ok(s.x.size());
        for (size_t i = 0; i < s.x.size(); ++i) {
            ok[i] = std::isfinite(s.x[i]) && std::isfinite(s.y[i]);
            if (ok[i]) pts[i] = to_px(s.x[i], s.y[i]);
        }
        const std::string color = xml_escape(colors[k]);
        const std::string d = clipped_path(pts, ok, area, drawn);
        if (!d.empty())
            o += "<path class=\"series\" d=\"" + d + "\" fill=\"none\" stroke=\"" + color +
                 "\" stroke-width=\"2\" stroke-linejoin=\"round\"" +
                 (s.dashed ? " stroke-dasharray=\"7 4\"" : " stroke-linecap=\"round\"") + "/>\n";
        if (s.markers) {
            std::string m;
            for (size_t i = 0; i < pts.size(); ++i)
                if (ok[i] && area.contains(pts[i])) {
                    m += "<circle cx=\"" + px(pts[i].x) + "\" cy=\"" + px(pts[i].y) + "\" r=\"3\"/>\n";
                    drawn.push_back({pts[i], pts[i]});
                }
            if (!m.empty()) o += "<g class=\"markers\" fill=\"" + color + "\">\n" + m + "</g>\n";
        }
    }

    if (spec.legend && !series.empty()) {
        std::vector<std::string> labels;
        size_t chars = 0;
        for (size_t k = 0; k < series.size(); ++k) {
            labels.push_back(series[k].label.empty() ? "series " + std::to_string(k + 1) : series[k].label);
            chars = std::max(chars, utf8_length(labels.back()));
        }
        const double row = 18, pad = 8, sample = 24;
        const double bw = pad + sample + 6 + chars * kCharW + pad;
        const double bh = pad + row * series.size() + pad - 6;
        // The place that covers the fewest drawn points (lines sampled every ~3 px): the corners first, then
        // a 7 x 7 grid over the plot area, row by row; ties keep the earlier place.
        const double inset = 8;
        const double xl = area.l + inset, xr = area.r - inset - bw;
        const double yt = area.t + inset, yb = area.b - inset - bh;
        std::vector<Pt> corners = {{xr, yt}, {xl, yt}, {xr, yb}, {xl, yb}};
        for (int r = 0; r <= 6; ++r)
            for (int c = 0; c <= 6; ++c) corners.push_back({xl + (xr - xl) * c / 6, yt + (yb - yt) * r / 6});
        Pt best = corners[0];
        size_t best_hits = std::numeric_limits<size_t>::max();
        for (const Pt& c : corners) {
            if (best_hits == 0) break;
            const Rect box{c.x - 2, c.y - 2, c.x + bw + 2, c.y + bh + 2};
            size_t hits = 0;
            for (const Segment& sg : drawn) {
                const double len = std::hypot(sg.b.x - sg.a.x, sg.b.y - sg.a.y);
                const int n = std::min(100000, static_cast<int>(len / 3) + 1);
                for (int j = 0; j <= n; ++j) {
                    const double t = static_cast<double>(j) / n;
                    hits += box.contains({sg.a.x + t * (sg.b.x - sg.a.x), sg.a.y + t * (sg.b.y - sg.a.y)});
                }
            }
            if (hits < best_hits) {
                best_hits = hits;
                best = c;
            }
        }
        o += "<g class=\"legend\">\n";
        o += "<rect x=\"" + px(best.x) + "\" y=\"" + px(best.y) + "\" width=\"" + px(bw) + "\" height=\"" +
             px(bh) +
             "\" fill=\"#ffffff\" fill-opacity=\"0.9\" stroke=\"#999999\" stroke-width=\"1\" rx=\"3\"/>\n";
        for (size_t k = 0; k < series.size(); ++k) {
            const Series& s = series[k];
            const double cy = best.y + pad + row * k + 6;
            const std::string color = xml_escape(colors[k]);
            o += "<line x1=\"" + px(best.x + pad) + "\" y1=\"" + px(cy) + "\" x2=\"" +
                 px(best.x + pad + sample) + "\" y2=\"" + px(cy) + "\" stroke=\"" + color +
                 "\" stroke-width=\"2\"" + (s.dashed ? " stroke-dasharray=\"7 4\"" : "") + "/>\n";
            if (s.markers)
                o += "<circle cx=\"" + px(best.x + pad + sample / 2) + "\" cy=\"" + px(cy) +
                     "\" r=\"3\" fill=\"" + color + "\"/>\n";
            o += text_elem(best.x + pad + sample + 6, cy + 4, "start", labels[k], " fill=\"#222222\"");
        }
        o += "</g>\n";
    }
    o += "</svg>\n";
    return o;
}

std::string markdown_table(const std::vector<std::string>& header,
                           const std::vector<std::vector<std::string>>& rows) {
    if (header.empty()) throw Error("markdown table: the header has no columns");
    const size_t n = header.size();
    std::vector<std::vector<std::string>> cells;
    cells.reserve(rows.size() + 1);
    cells.emplace_back();
    for (const std::string& h : header) cells.back().push_back(md_cell(h));
    for (size_t r = 0; r < rows.size(); ++r) {
        if (rows[r].size() > n)
            throw Error("markdown table: row " + std::to_string(r + 1) + " has " +
                        std::to_string(rows[r].size()) + " cells, the header " + std::to_string(n));
        cells.emplace_back();
        for (const std::string& c : rows[r]) cells.back().push_back(md_cell(c));
        cells.back().resize(n);
    }
    std::vector<size_t> width(n, 3);  // "---" at least
    std::vector<bool> right(n);
    for (size_t c = 0; c < n; ++c) {
        bool any_number = false, all_numeric = true;
        for (size_t r = 0; r < cells.size(); ++r) {
            const std::string& v = cells[r][c];
            width[c] = std::max(width[c], utf8_length(v));
            if (r == 0 || v.empty() || v == "n/a" || v == "-") continue;
            if (is_number_cell(v)) {
                any_number = true;
            } else {
                all_numeric = false;
            }
        }
        right[c] = any_number && all_numeric;
    }
    std::string out;
    const auto emit_row = [&](const std::vector<std::string>& row) {
        out += '|';
        for (size_t c = 0; c < n; ++c) {
            const std::string fill(width[c] - utf8_length(row[c]), ' ');
            out += ' ' + (right[c] ? fill + row[c] : row[c] + fill) + " |";
        }
        out += '\n';
    };
    emit_row(cells[0]);
    out += '|';
    for (size_t c = 0; c < n; ++c)
        out += ' ' + (right[c] ? std::string(width[c] - 1, '-') + ':' : std::string(width[c], '-')) + " |";
    out += '\n';
    for (size_t r = 1; r < cells.size(); ++r) emit_row(cells[r]);
    return out;
}

void write_text_file(const std::string& path, const std::string& text) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw Error("output file '" + path + "': cannot open for writing (" + std::strerror(errno) + ")");
    const size_t written = std::fwrite(text.data(), 1, text.size(), f);
    const int write_errno = errno;
    const bool closed = std::fclose(f) == 0;
    if (written != text.size() || !closed)
        throw Error("output file '" + path + "': write failed (" +
                    std::strerror(written != text.size() ? write_errno : errno) + ")");
}

}  // namespace kvlens
