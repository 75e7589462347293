// report.html for a run folder: loss curves as inline SVG (one panel per logged metric), the
// sample grids (embedded as relative links), the checkpoints and the resolved config. Reads
// run_dir/metrics.jsonl, run_dir/config.yaml and run_dir/samples/*.png; written atomically.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace psvae::train {

// One curve: x (step) and y values; used for the SVG panels and by later reports (the demo).
struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;
};

// An inline <svg> line plot of one or more series sharing axes (log-scale y when log_y).
std::string svg_plot(const std::vector<Series>& series, const std::string& title, bool log_y,
                     int width = 520, int height = 260);

// Reads metrics.jsonl into one series per numeric key (x = "step"); lines that do not parse are
// skipped (a crash may leave a torn last line).
std::vector<Series> read_metrics(const std::string& metrics_jsonl);

void write_report(const std::string& run_dir, const std::string& title);

// s with & < > " ' replaced by their HTML entities, for text and attribute values.
std::string html_escape(const std::string& s);

}  // namespace psvae::train
