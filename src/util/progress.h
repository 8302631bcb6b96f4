// A progress bar on stderr: redrawn in place on a terminal, a line every few percent otherwise (CI logs).
#pragma once

#include <chrono>
#include <string>

namespace kvlens {

class Progress {
public:
    Progress(std::string label, int64_t total, int64_t done = 0);
    void add(int64_t n = 1, const std::string& note = "");
    void finish();

private:
    void draw(const std::string& note);
    std::string label_;
    int64_t total_, done_, start_done_;
    int last_pct_ = -1;
    bool tty_;
    std::chrono::steady_clock::time_point t0_;
};

}  // namespace kvlens
