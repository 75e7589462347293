// report.html: one self-contained page per run folder (inline SVG and CSS, no scripts, no external
// resources), so it opens from a laptop after an scp of the folder, or from a CI artifact.
#include "train/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "tensor/atomic_file.h"
#include "train/progress.h"

namespace psvae::train {
namespace fs = std::filesystem;

std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

namespace {

// Tick label: at most 4 significant digits, exponents without '+' and leading zeros ("1e-5").
std::string tick_label(double v) {
  if (v == 0) return "0";
  std::string s = fmt::format("{:.4g}", v);
  size_t e = s.find('e');
  if (e == std::string::npos) return s;
  std::string mant = s.substr(0, e), ex = s.substr(e + 1);
  bool neg = ex[0] == '-';
  size_t i = (ex[0] == '-' || ex[0] == '+') ? 1 : 0;
  while (i + 1 < ex.size() && ex[i] == '0') ++i;
  return mant + "e" + (neg ? "-" : "") + ex.substr(i);
}

// The "nice" step (1, 2 or 5 times a power of ten) at or above raw.
double nice_step(double raw) {
  double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0})
    if (m * p >= raw * (1 - 1e-9)) return m * p;
  return 10 * p;
}

// Linear ticks covering [lo, hi] with about `want` steps; the range is widened to the outer ticks
// so the curve never touches the frame.
std::vector<double> linear_ticks(double& lo, double& hi, int want, double min_step = 0) {
  double step = std::max(min_step, nice_step((hi - lo) / want));
  lo = std::floor(lo / step + 1e-9) * step;
  hi = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> t;
  for (double v = lo; v <= hi + step * 1e-6; v += step)
    t.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
  return t;
}

// Log ticks in log10 units within [llo, lhi]: decades when the range spans two or more (thinned to
// at most 7 labels), 1-2-5 within a decade or so, and on a range narrower than that (a loss that
// moves from 0.031 to 0.024) nice linear steps of the values themselves, so there are always at
// least two labelled gridlines.
std::vector<double> log_ticks(double llo, double lhi) {
  double span = lhi - llo;
  std::vector<double> t;
  if (span >= 0.6) {
    bool decades = span >= 2;
    int stride = decades ? std::max(1, static_cast<int>(std::ceil(span / 6))) : 1;
    for (int k = static_cast<int>(std::floor(llo)); k <= static_cast<int>(std::ceil(lhi)); ++k) {
      if (decades && k % stride != 0) continue;
      for (double m : decades ? std::vector<double>{1} : std::vector<double>{1, 2, 5}) {
        double l = k + std::log10(m);
        if (l >= llo - 1e-9 && l <= lhi + 1e-9) t.push_back(l);
      }
    }
    if (t.size() >= 2) return t;
    t.clear();
  }
  double lo = std::pow(10.0, llo), hi = std::pow(10.0, lhi);
  double step = nice_step((hi - lo) / 4);
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi * (1 + 1e-12); v += step)
    t.push_back(std::log10(v));
  return t;
}

const char* kPalette[] = {"#2563eb", "#dc2626", "#059669", "#d97706",
                          "#7c3aed", "#db2777", "#0891b2", "#4b5563"};

}  // namespace

std::string svg_plot(const std::vector<Series>& series, const std::string& title, bool log_y,
                     int width, int height) {
  auto usable = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!log_y || y > 0);
  };
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  bool integral_x = true;  // steps: no tick at step 1.5
  for (const Series& s : series)
    for (auto [x, y] : s.points)
      if (usable(x, y)) {
        integral_x = integral_x && x == std::floor(x);
        double v = log_y ? std::log10(y) : y;
        xlo = std::min(xlo, x), xhi = std::max(xhi, x);
        ylo = std::min(ylo, v), yhi = std::max(yhi, v);
      }

  // Legend rows below the x labels: items laid left to right, ~6.5 px per character at 11 px.
  const double left = 62, right = 14, top = 28;
  std::vector<std::pair<double, int>> legend_pos;  // x offset, row
  int rows = 0;
  if (series.size() > 1) {
    double x = left;
    rows = 1;
    for (const Series& s : series) {
      double w = 26 + 6.5 * static_cast<double>(s.name.size()) + 14;
      if (x + w > width - right && x > left) x = left, ++rows;
      legend_pos.push_back({x, rows - 1});
      x += w;
    }
  }
  const double bottom = 34 + 16.0 * rows;
  const double pw = width - left - right, ph = height - top - bottom;

  std::string o = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {0} {1}\" width=\"{0}\" "
      "height=\"{1}\" font-family=\"system-ui, sans-serif\" font-size=\"11\" role=\"img\">\n"
      "<title>{2}</title>\n<rect width=\"{0}\" height=\"{1}\" fill=\"#ffffff\"/>\n"
      "<text x=\"{3}\" y=\"17\" font-size=\"13\" font-weight=\"600\" fill=\"#111827\">{2}</text>\n",
      width, height, html_escape(title), left);
  if (!(xlo <= xhi)) {  // nothing finite to draw
    o += fmt::format(
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#d1d5db\"/>\n"
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#6b7280\">no data</text>\n</svg>\n",
        left, top, pw, ph, left + pw / 2, top + ph / 2);
    return o;
  }

  // Ranges: a single x or y value gets a window around it so the point sits mid-panel.
  if (xlo == xhi) xlo -= 1, xhi += 1;
  std::vector<double> xt = linear_ticks(xlo, xhi, 5, integral_x ? 1.0 : 0.0);
  std::vector<double> yt;
  if (log_y) {
    double pad = std::max(0.05, 0.04 * (yhi - ylo));
    ylo -= pad, yhi += pad;
    yt = log_ticks(ylo, yhi);
  } else {
    if (ylo == yhi) {
      double d = ylo == 0 ? 1 : std::abs(ylo) * 0.1;
      ylo -= d, yhi += d;
    }
    yt = linear_ticks(ylo, yhi, 4);
  }
  auto sx = [&](double x) { return left + (x - xlo) / (xhi - xlo) * pw; };
  auto sy = [&](double v) { return top + (1 - (v - ylo) / (yhi - ylo)) * ph; };

  for (double v : yt) {
    double y = sy(v);
    o += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e5e7eb\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\" fill=\"#4b5563\">{}</text>\n",
        left, y, left + pw, y, left - 6, y + 3.5, tick_label(log_y ? std::pow(10.0, v) : v));
  }
  for (double v : xt) {
    double x = sx(v);
    o += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#f3f4f6\"/>"
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#6b7280\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#4b5563\">{}</text>\n",
        x, top, x, top + ph, x, top + ph, x, top + ph + 4, x, top + ph + 16, tick_label(v));
  }
  o += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#9ca3af\"/>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#6b7280\">step</text>\n",
      left, top, pw, ph, left + pw, top + ph + 28);
  if (log_y)
    o += fmt::format(
        "<text x=\"{}\" y=\"17\" text-anchor=\"end\" fill=\"#6b7280\">log scale</text>\n",
        width - right);

  for (size_t i = 0; i < series.size(); ++i) {
    const char* colour = kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
    std::string pts;
    int n = 0;
    double lx = 0, ly = 0;
    for (auto [x, y] : series[i].points) {
      if (!usable(x, y)) continue;  // NaN/inf (and y <= 0 on a log axis) are left out
      lx = sx(x), ly = sy(log_y ? std::log10(y) : y);
      pts += fmt::format("{}{:.1f},{:.1f}", n ? " " : "", lx, ly);
      ++n;
    }
    if (n == 1)
      o += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", lx, ly,
                       colour);
    else if (n > 1)
      o += fmt::format(
          "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" "
          "stroke-linejoin=\"round\"/>\n",
          pts, colour);
    if (!legend_pos.empty()) {
      double x = legend_pos[i].first, y = top + ph + 34 + 16.0 * legend_pos[i].second;
      o += fmt::format(
          "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
          "stroke-width=\"2.5\"/><text x=\"{:.1f}\" y=\"{:.1f}\" fill=\"#111827\">{}</text>\n",
          x, y - 4, x + 20, y - 4, colour, x + 26, y, html_escape(series[i].name));
    }
  }
  o += "</svg>\n";
  return o;
}

std::vector<Series> read_metrics(const std::string& metrics_jsonl) {
  std::ifstream f(metrics_jsonl);
  if (!f) throw std::runtime_error(metrics_jsonl + ": cannot open: " + std::strerror(errno));
  std::vector<Series> out;
  std::map<std::string, size_t> index;
  std::string line;
  while (std::getline(f, line)) {
    // ordered_json keeps the writer's key order (the series order of the report); with
    // allow_exceptions = false a torn or garbled line yields a discarded value, not a throw.
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    auto st = j.find("step");
    if (st == j.end() || !st->is_number()) continue;
    double step = st->get<double>();
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      if (key == "step" || key.rfind("elapsed", 0) == 0) continue;
      double v;
      if (it->is_number())
        v = it->get<double>();
      else if (it->is_null())  // JSON has no NaN: a writer may log a non-finite value as null
        v = std::nan("");
      else
        continue;
      auto [pos, fresh] = index.emplace(key, out.size());
      if (fresh) out.push_back(Series{key, {}});
      auto& pts = out[pos->second].points;
      // A run resumed from an earlier checkpoint logs some steps again: the later lines replace
      // the abandoned history, so each curve stays a function of the step.
      while (!pts.empty() && pts.back().first >= step) pts.pop_back();
      pts.push_back({step, v});
    }
  }
  return out;
}

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// The step in "step_00001000.png" / "step_00001000.safetensors"; -1 when the name has none.
int64_t step_of(const std::string& name) {
  if (name.rfind("step_", 0) != 0) return -1;
  size_t i = 5;
  int64_t v = 0;
  bool any = false;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])))
    v = v * 10 + (name[i++] - '0'), any = true;
  return any ? v : -1;
}

struct Entry {
  std::string name;
  int64_t step;
  uintmax_t bytes;
};

// Files in dir ending with ext, newest step first, names without a step after them.
std::vector<Entry> list_dir(const fs::path& dir, const std::string& ext) {
  std::vector<Entry> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (!e.is_regular_file(ec) || e.path().extension() != ext) continue;
    if (name.find(".tmp") != std::string::npos) continue;  // an atomic write in progress
    out.push_back({name, step_of(name), e.file_size(ec)});
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) {
    return a.step != b.step ? a.step > b.step : a.name < b.name;
  });
  return out;
}

bool positive(const std::vector<Series>& s) {
  for (const Series& x : s)
    for (auto [st, v] : x.points)
      if (std::isfinite(v) && v <= 0) return false;
  return true;
}

const char* kCss = R"(
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827;
       background: #f3f4f6; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 12px; }
.meta { color: #4b5563; margin: 0; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 16px 20px;
          margin-top: 16px; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 12px; }
.panels svg { width: 100%; height: auto; border: 1px solid #f3f4f6; border-radius: 4px; }
table { border-collapse: collapse; }
td, th { padding: 3px 14px 3px 0; text-align: left; font-variant-numeric: tabular-nums; }
th { color: #4b5563; font-weight: 600; border-bottom: 1px solid #e5e7eb; }
.samples { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; }
figure img { image-rendering: pixelated; min-width: 256px; max-width: 100%; border: 1px solid #e5e7eb; }
figcaption { color: #4b5563; font-size: 12px; }
pre { background: #f9fafb; border: 1px solid #e5e7eb; border-radius: 4px; padding: 12px;
      overflow-x: auto; font-size: 12px; }
code { font-size: 13px; }
.none { color: #6b7280; }
)";

}  // namespace

void write_report(const std::string& run_dir, const std::string& title) {
  const fs::path dir(run_dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw std::runtime_error("write_report: run folder '" + run_dir + "' does not exist");

  std::vector<Series> metrics;
  if (fs::exists(dir / "metrics.jsonl", ec))
    metrics = read_metrics((dir / "metrics.jsonl").string());
  double last_step = -1;
  for (const Series& s : metrics)
    if (!s.points.empty()) last_step = std::max(last_step, s.points.back().first);

  std::string h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  h += "<title>" + html_escape(title) + "</title>\n<style>" + kCss +
       "</style>\n</head>\n<body>\n<main>\n";

  std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  h += "<header>\n<h1>" + html_escape(title) + "</h1>\n<p class=\"meta\">run folder <code>" +
       html_escape(fs::absolute(dir, ec).lexically_normal().string()) + "</code> &middot; ";
  h += last_step >= 0 ? fmt::format("last step {}", static_cast<int64_t>(last_step))
                      : std::string("no steps logged yet");
  h += " &middot; written " + std::string(when) + "</p>\n</header>\n";

  // Final values: the last finite value of every metric.
  h += "<section>\n<h2>Final values</h2>\n";
  if (metrics.empty()) {
    h += "<p class=\"none\">No metrics.jsonl yet.</p>\n";
  } else {
    h += "<table>\n<tr><th>metric</th><th>value</th><th>at step</th></tr>\n";
    for (const Series& s : metrics) {
      auto it = std::find_if(s.points.rbegin(), s.points.rend(),
                             [](const auto& p) { return std::isfinite(p.second); });
      if (it == s.points.rend())
        h += fmt::format("<tr><td>{}</td><td>&ndash;</td><td></td></tr>\n", html_escape(s.name));
      else
        h += fmt::format("<tr><td>{}</td><td>{:.6g}</td><td>{}</td></tr>\n", html_escape(s.name),
                         it->second, static_cast<int64_t>(it->first));
    }
    h += "</table>\n";
  }
  h += "</section>\n";

  // Panels: the loss and its terms on log y (they fall over decades), the rest linear. A term
  // that goes to zero or below (a log-likelihood, a signed penalty) cannot sit on a log axis.
  if (!metrics.empty()) {
    std::map<std::string, const Series*> by;
    for (const Series& s : metrics) by[s.name] = &s;
    const std::vector<std::string> non_terms = {
        "loss",          "lr",        "grad_norm",   "steps_per_s", "images_per_s", "epoch",
        "skipped_steps", "nonfinite", "bad_samples", "memory",      "mem"};
    std::vector<const Series*> terms, others;
    for (const Series& s : metrics) {
      if (std::find(non_terms.begin(), non_terms.end(), s.name) != non_terms.end()) continue;
      bool counter =
          s.name.find("mem") != std::string::npos || s.name.find("skip") != std::string::npos;
      (counter ? others : terms).push_back(&s);
    }
    h += "<section>\n<h2>Curves</h2>\n<div class=\"panels\">\n";
    auto panel = [&](std::vector<Series> s, const std::string& t, bool want_log) {
      h += svg_plot(s, t, want_log && positive(s));
    };
    if (by.count("loss") && !terms.empty()) {
      std::vector<Series> all = {*by["loss"]};
      for (const Series* t : terms) all.push_back(*t);
      panel(all, "loss and its terms", true);
    }
    if (by.count("loss")) panel({*by["loss"]}, "loss", true);
    for (const Series* t : terms) panel({*t}, t->name, true);
    for (const char* k : {"lr", "grad_norm", "steps_per_s", "images_per_s"})
      if (by.count(k)) panel({*by[k]}, k, false);
    for (const char* k : {"epoch", "skipped_steps", "nonfinite", "bad_samples", "memory", "mem"})
      if (by.count(k)) panel({*by[k]}, k, false);
    for (const Series* t : others) panel({*t}, t->name, false);
    h += "</div>\n</section>\n";
  }

  // Sample grids, newest first, linked relative to the report so the folder can move.
  std::vector<Entry> grids = list_dir(dir / "samples", ".png");
  h += "<section>\n<h2>Samples</h2>\n";
  if (grids.empty()) {
    h += "<p class=\"none\">No sample grids.</p>\n";
  } else {
    h += "<div class=\"samples\">\n";
    for (const Entry& g : grids) {
      std::string cap = g.step >= 0 ? fmt::format("step {}", g.step) : g.name;
      h += fmt::format(
          "<figure><img src=\"samples/{0}\" alt=\"{1}\" loading=\"lazy\">"
          "<figcaption>{1}</figcaption></figure>\n",
          html_escape(g.name), html_escape(cap));
    }
    h += "</div>\n";
  }
  h += "</section>\n";

  std::vector<Entry> ckpts = list_dir(dir / "checkpoints", ".safetensors");
  h += "<section>\n<h2>Checkpoints</h2>\n";
  if (ckpts.empty()) {
    h += "<p class=\"none\">No checkpoints.</p>\n";
  } else {
    h += "<table>\n<tr><th>file</th><th>step</th><th>size</th></tr>\n";
    for (const Entry& c : ckpts)
      h += fmt::format("<tr><td><code>checkpoints/{}</code></td><td>{}</td><td>{}</td></tr>\n",
                       html_escape(c.name), c.step >= 0 ? std::to_string(c.step) : "best",
                       format_bytes(static_cast<size_t>(c.bytes)));
    h += "</table>\n";
  }
  h += "</section>\n";

  h += "<section>\n<h2>Config</h2>\n";
  if (fs::exists(dir / "config.yaml", ec))
    h += "<pre>" + html_escape(read_text(dir / "config.yaml")) + "</pre>\n";
  else
    h += "<p class=\"none\">No config.yaml.</p>\n";
  h += "</section>\n</main>\n</body>\n</html>\n";

  // Atomic: a reader (a browser refreshing mid-run) sees the old page or the new one, never half.
  // Errors name the page: "<dir>/report.html: cannot create <tmp>: <strerror>".
  write_file_atomic((dir / "report.html").string(), h);
}

}  // namespace psvae::train
