// report.html and its parts: the SVG plot (ticks, log axis, legend, single points, non-finite
// values), metrics.jsonl parsing (torn lines, resumed runs) and the page for a run folder.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "train/report.h"

using namespace psvae::train;
namespace fs = std::filesystem;

using psvae::test::TempDir;

namespace {

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) ++n;
  return n;
}

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Number of x,y pairs in the first polyline of an SVG.
size_t polyline_points(const std::string& svg) {
  size_t a = svg.find("<polyline points=\"");
  if (a == std::string::npos) return 0;
  a += 18;
  size_t b = svg.find('"', a);
  return count(svg.substr(a, b - a), ",");
}

}  // namespace

TEST_CASE("svg_plot: axes, ticks, legend and escaping") {
  Series a{"loss", {}}, b{"kl<term>", {}};
  for (int i = 0; i <= 100; i += 10) {
    a.points.push_back({i, 1.0 / (1 + i)});
    b.points.push_back({i, 0.5 / (1 + i)});
  }
  std::string svg = svg_plot({a, b}, "loss & terms", true);
  CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
  CHECK(svg.substr(svg.size() - 7) == "</svg>\n");
  CHECK(svg.find("loss &amp; terms") != std::string::npos);
  CHECK(svg.find(">kl&lt;term&gt;</text>") != std::string::npos);  // legend entry, escaped
  CHECK(svg.find(">loss</text>") != std::string::npos);
  CHECK(count(svg, "<polyline") == 2);
  CHECK(polyline_points(svg) == 11);
  // y from 0.0045 to 1: a bit over two decades -> decade labels.
  CHECK(svg.find(">0.01</text>") != std::string::npos);
  CHECK(svg.find(">0.1</text>") != std::string::npos);
  CHECK(svg.find(">1</text>") != std::string::npos);
  CHECK(svg.find("log scale") != std::string::npos);
  // x ticks at nice steps covering 0..100.
  CHECK(svg.find(">0</text>") != std::string::npos);
  CHECK(svg.find(">100</text>") != std::string::npos);
  CHECK(svg.find("nan") == std::string::npos);
  CHECK(svg.find("inf") == std::string::npos);

  // One series: no legend, linear ticks.
  Series lr{"lr", {{0, 0}, {50, 1e-4}, {100, 5e-5}}};
  std::string lin = svg_plot({lr}, "learning rate", false);
  CHECK(lin.find("log scale") == std::string::npos);
  CHECK(lin.find(">lr</text>") == std::string::npos);  // no legend for a single series
  CHECK(lin.find(">0.0001</text>") != std::string::npos);
  CHECK(lin.find(">5e-5</text>") != std::string::npos);
}

TEST_CASE("svg_plot: a narrow log range still gets labelled ticks; huge ranges are thinned") {
  Series s{"loss", {{1, 0.031}, {2, 0.028}, {3, 0.024}}};
  std::string svg = svg_plot({s}, "loss", true);
  // [0.024, 0.031] padded by 0.05 decades is [0.0214, 0.0347]: steps of 0.005 (0.025, 0.03).
  CHECK(svg.find(">0.03</text>") != std::string::npos);
  CHECK(count(svg, "text-anchor=\"end\" fill=\"#4b5563\"") >= 2);

  Series wide{"x", {{0, 1e-12}, {1, 1e3}}};
  std::string w = svg_plot({wide}, "wide", true);
  size_t labels = count(w, "text-anchor=\"end\" fill=\"#4b5563\"");
  CHECK(labels >= 3);
  CHECK(labels <= 8);
  CHECK(w.find(">1e-12</text>") != std::string::npos);
}

TEST_CASE("svg_plot: single points, NaN and inf are handled") {
  std::string one = svg_plot({Series{"loss", {{5, 0.5}}}}, "one point", true);
  CHECK(one.find("<circle") != std::string::npos);
  CHECK(one.find("<polyline") == std::string::npos);
  CHECK(one.find("nan") == std::string::npos);

  Series s{"loss", {{0, 1}, {1, NAN}, {2, INFINITY}, {3, 0.5}, {4, -1}, {5, 0.25}}};
  std::string lin = svg_plot({s}, "skips", false);
  CHECK(polyline_points(lin) == 4);  // NaN and inf skipped; -1 drawn on a linear axis
  std::string lg = svg_plot({s}, "skips", true);
  CHECK(polyline_points(lg) == 3);  // and -1 skipped on a log axis
  CHECK(lg.find("nan") == std::string::npos);
  CHECK(lg.find("inf") == std::string::npos);

  std::string none = svg_plot({Series{"loss", {{0, NAN}}}}, "empty", false);
  CHECK(none.find("no data") != std::string::npos);
  CHECK(svg_plot({}, "nothing", true).find("no data") != std::string::npos);
}

TEST_CASE("read_metrics: series per key, torn lines skipped, resumed steps replaced") {
  TempDir d("report");
  write(d.path() / "metrics.jsonl",
        "{\"step\": 10, \"loss\": 0.5, \"kl\": 0.1, \"lr\": 1e-4, \"elapsed_s\": 3.2}\n"
        "not json\n"
        "[1, 2]\n"
        "{\"loss\": 9}\n"  // no step: skipped
        "{\"step\": 20, \"loss\": 0.4, \"kl\": null, \"lr\": 1e-4, \"task\": \"svae\"}\n"
        "{\"step\": 30, \"loss\": 0.3, \"kl\": 0.08, \"lr\": 9e-5}\n"
        // resumed from step 20: step 30 is logged again, the earlier one is dropped
        "{\"step\": 30, \"loss\": 0.35, \"kl\": 0.09, \"lr\": 9e-5}\n"
        "{\"step\": 40, \"loss\": 0.2, \"k");  // torn by a crash
  std::vector<Series> m = read_metrics((d.path() / "metrics.jsonl").string());
  REQUIRE(m.size() == 3);
  CHECK(m[0].name == "loss");
  CHECK(m[1].name == "kl");
  CHECK(m[2].name == "lr");
  REQUIRE(m[0].points.size() == 3);
  CHECK(m[0].points[0] == std::pair<double, double>(10, 0.5));
  CHECK(m[0].points[2] == std::pair<double, double>(30, 0.35));
  REQUIRE(m[1].points.size() == 3);
  CHECK(std::isnan(m[1].points[1].second));  // null = a non-finite value the writer could not log
  CHECK_THROWS_WITH_AS(read_metrics((d.path() / "missing.jsonl").string()),
                       doctest::Contains("missing.jsonl: cannot open"), std::runtime_error);
}

TEST_CASE("write_report: a self-contained page for a run folder") {
  TempDir d("report");
  std::string lines;
  for (int s = 10; s <= 30; s += 10)
    lines += "{\"step\": " + std::to_string(s) + ", \"loss\": " + std::to_string(1.0 / s) +
             ", \"mse\": " + std::to_string(0.5 / s) + ", \"lr\": 0.0001, \"grad_norm\": 0.7" +
             ", \"steps_per_s\": 3.5, \"images_per_s\": 112, \"elapsed_s\": " + std::to_string(s) +
             "}\n";
  write(d.path() / "metrics.jsonl", lines);
  write(d.path() / "config.yaml", "# a <comment> & more\ntrain:\n  lr: 1e-4\n");
  write(d.path() / "samples" / "step_00000100.png", "x");
  write(d.path() / "samples" / "step_00000200.png", "x");
  write(d.path() / "samples" / "step_00000030.png", "x");
  write(d.path() / "checkpoints" / "step_00000020.safetensors", std::string(2048, 'a'));
  write(d.path() / "checkpoints" / "step_00000030.safetensors", std::string(2048, 'a'));
  write(d.path() / "checkpoints" / "best.safetensors", std::string(2048, 'a'));

  write_report(d.path().string(), "svae <tiny>");
  std::string html = read(d.path() / "report.html");
  for (const auto& e : fs::directory_iterator(d.path()))  // the temp file was renamed away
    CHECK(e.path().filename().string().find(".tmp") == std::string::npos);

  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(html.find("<title>svae &lt;tiny&gt;</title>") != std::string::npos);
  CHECK(html.find(fs::absolute(d.path()).lexically_normal().string()) != std::string::npos);
  CHECK(html.find("last step 30") != std::string::npos);
  // Final values table.
  CHECK(html.find("<td>loss</td><td>0.033333</td><td>30</td>") != std::string::npos);
  // Panels: loss+terms overview, loss, mse, lr, grad_norm, steps/s, images/s; elapsed is not one.
  CHECK(count(html, "<svg ") == 7);
  CHECK(html.find("elapsed") == std::string::npos);
  // Grids newest first, relative links, captions.
  size_t p200 = html.find("src=\"samples/step_00000200.png\"");
  size_t p100 = html.find("src=\"samples/step_00000100.png\"");
  size_t p30 = html.find("src=\"samples/step_00000030.png\"");
  CHECK(p200 != std::string::npos);
  CHECK(p200 < p100);
  CHECK(p100 < p30);
  CHECK(html.find("<figcaption>step 200</figcaption>") != std::string::npos);
  // Checkpoints, newest first, best listed.
  size_t c30 = html.find("checkpoints/step_00000030.safetensors");
  size_t c20 = html.find("checkpoints/step_00000020.safetensors");
  CHECK(c30 < c20);
  CHECK(c20 != std::string::npos);
  CHECK(html.find("checkpoints/best.safetensors</code></td><td>best</td><td>2.0 KiB") !=
        std::string::npos);
  // The config, escaped.
  CHECK(html.find("<pre># a &lt;comment&gt; &amp; more\ntrain:\n  lr: 1e-4\n</pre>") !=
        std::string::npos);
  // Self-contained: no scripts, no remote resources (the SVG namespace is only an identifier).
  CHECK(html.find("<script") == std::string::npos);
  CHECK(count(html, "http") == count(html, "http://www.w3.org/2000/svg"));
  CHECK(html.find("<link") == std::string::npos);

  // Rewriting replaces the page.
  write(d.path() / "samples" / "step_00000300.png", "x");
  write_report(d.path().string(), "svae <tiny>");
  CHECK(read(d.path() / "report.html").find("step_00000300.png") != std::string::npos);
}

TEST_CASE("write_report: an empty run folder, and a missing one") {
  TempDir d("report");
  write_report(d.path().string(), "fresh");
  std::string html = read(d.path() / "report.html");
  CHECK(html.find("no steps logged yet") != std::string::npos);
  CHECK(html.find("No metrics.jsonl yet.") != std::string::npos);
  CHECK(html.find("No sample grids.") != std::string::npos);
  CHECK(html.find("No checkpoints.") != std::string::npos);
  CHECK(html.find("No config.yaml.") != std::string::npos);
  std::string missing = (d.path() / "nope").string();
  std::string what;
  try {
    write_report(missing, "x");
  } catch (const std::runtime_error& e) {
    what = e.what();
  }
  CHECK(what == "write_report: run folder '" + missing + "' does not exist");
}
