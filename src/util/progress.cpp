#include "util/progress.h"

#include <unistd.h>

#include <cstdio>

namespace kvlens {

Progress::Progress(std::string label, int64_t total, int64_t done)
    : label_(std::move(label)),
      total_(total),
      done_(done),
      start_done_(done),
      tty_(isatty(2) != 0),
      t0_(std::chrono::steady_clock::now()) {
    draw("");
}

void Progress::add(int64_t n, const std::string& note) {
    done_ += n;
    draw(note);
}

void Progress::draw(const std::string& note) {
    const int pct = total_ > 0 ? (int)(100 * done_ / total_) : 100;
    if (!tty_ && pct / 5 == last_pct_ / 5 && done_ != total_) return;  // logs: every 5%
    last_pct_ = pct;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double rate = s > 0 ? (done_ - start_done_) / s : 0;
    const double eta = rate > 0 ? (total_ - done_) / rate : 0;
    const int width = 30, fill = total_ > 0 ? (int)(width * done_ / total_) : width;
    std::string bar(fill, '#');
    bar.resize(width, '.');
    fprintf(stderr, "%s%s [%s] %lld/%lld %3d%%  %.2f/s  eta %.0fs  %s%s", tty_ ? "\r" : "", label_.c_str(),
            bar.c_str(), (long long)done_, (long long)total_, pct, rate, eta, note.c_str(),
            tty_ ? "\033[K" : "\n");
    fflush(stderr);
}

void Progress::finish() {
    if (tty_) fputc('\n', stderr);
}

}  // namespace kvlens
