// The demo's outputs: PNGs, metrics.json and report.html (one self-contained page: inline SVG and
// CSS, images linked relatively, so the folder can be copied anywhere and opened).
#include "train/demo_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "tensor/atomic_file.h"
#include "train/data/dataset.h"
#include "train/image_io.h"
#include "train/progress.h"
#include "train/report.h"

namespace psvae::train {

namespace fs = std::filesystem;

namespace {

// Images (3,H,W) stacked into (n,3,H,W) f32 CPU.
Tensor stack(const std::vector<Tensor>& images) {
  const Shape& s = images.front().shape();
  Tensor b = Tensor::empty({static_cast<int64_t>(images.size()), s[0], s[1], s[2]}, DType::F32);
  const int64_t per = images.front().numel();
  for (size_t i = 0; i < images.size(); ++i) {
    Tensor im = images[i].to(Device::cpu());
    if (im.numel() != per)
      throw std::runtime_error(
          fmt::format("demo report: image {} has {} values, expected {}", i, im.numel(), per));
    std::memcpy(b.data<float>() + static_cast<int64_t>(i) * per, im.data<float>(),
                static_cast<size_t>(per) * sizeof(float));
  }
  return b;
}

// Row i of (N,3,H,W) as (3,H,W).
Tensor row(const Tensor& b, int64_t i) {
  return b.slice0(i, i + 1).reshape({b.size(1), b.size(2), b.size(3)});
}

void save_grid(const fs::path& path, const Tensor& images, int nrow) {
  save_png(path.string(), make_grid(images, nrow));
}

// The source with the regenerated region (mask 0) shown as mid grey: what inpainting was given.
Tensor masked_view(const Tensor& source, const Tensor& mask) {
  Tensor out = source.to(Device::cpu()).clone();
  Tensor m = mask.to(Device::cpu());
  const int64_t hw = m.numel();
  float* o = out.data<float>();
  const float* k = m.data<float>();
  for (int64_t c = 0; c < out.size(0); ++c)
    for (int64_t i = 0; i < hw; ++i)
      if (k[i] < 0.5f) o[c * hw + i] = 0.0f;
  return out;
}

const char* name_or_none(int index, const char* (*name)(int), int count) {
  return index >= 0 && index < count ? name(index) : "none";
}

std::string analysis_text(const Analysis& a) {
  return fmt::format("{} {}", name_or_none(a.colour, synthetic_colour_name, kSyntheticNumColours),
                     name_or_none(a.shape, synthetic_shape_name, kSyntheticNumShapes));
}

std::string pct(double fraction) { return fmt::format("{:.1f}%", 100.0 * fraction); }

std::string target_value(const DemoTarget& t, double v) {
  if (t.unit == "%") return pct(v);
  if (t.unit == "s") return format_duration(v);
  return fmt::format("{:.2f} {}", v, t.unit);
}

nlohmann::json accuracy_json(const Accuracy& a) {
  return {{"n", a.n},
          {"both", a.both_rate()},
          {"colour", a.colour_rate()},
          {"shape", a.shape_rate()},
          {"no_object", a.none}};
}

nlohmann::json examples_json(const std::vector<DemoExample>& ex) {
  nlohmann::json arr = nlohmann::json::array();
  for (const DemoExample& e : ex)
    arr.push_back({{"source_caption", e.source_caption},
                   {"prompt", e.prompt},
                   {"analysed_colour",
                    name_or_none(e.analysis.colour, synthetic_colour_name, kSyntheticNumColours)},
                   {"analysed_shape",
                    name_or_none(e.analysis.shape, synthetic_shape_name, kSyntheticNumShapes)},
                   {"follows_prompt", e.follows()}});
  return arr;
}

double follow_rate(const std::vector<DemoExample>& ex) {
  if (ex.empty()) return 0;
  int64_t k = 0;
  for (const DemoExample& e : ex) k += e.follows();
  return static_cast<double>(k) / static_cast<double>(ex.size());
}

const DemoStage* find_stage(const DemoSummary& s, const std::string& name) {
  for (const DemoStage& st : s.stages)
    if (st.name == name) return &st;
  return nullptr;
}

const char* kCss = R"(
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827;
       background: #f3f4f6; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 12px 0 6px; }
.meta { color: #4b5563; margin: 0; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 16px 20px;
          margin-top: 16px; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 12px; }
.panels svg { width: 100%; height: auto; border: 1px solid #f3f4f6; border-radius: 4px; }
table { border-collapse: collapse; }
td, th { padding: 3px 14px 3px 0; text-align: left; font-variant-numeric: tabular-nums;
         vertical-align: middle; }
th { color: #4b5563; font-weight: 600; border-bottom: 1px solid #e5e7eb; }
img { image-rendering: pixelated; border: 1px solid #e5e7eb; }
.pass { color: #047857; font-weight: 600; }
.fail { color: #b91c1c; font-weight: 600; }
.info { color: #6b7280; }
.banner { font-size: 16px; margin-top: 8px; }
code { font-size: 13px; }
)";

}  // namespace

std::string prompt_slug(const std::string& prompt) {
  std::string s;
  for (char c : prompt) {
    if (std::isalnum(static_cast<unsigned char>(c)))
      s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    else if (!s.empty() && s.back() != '_')
      s += '_';
  }
  while (!s.empty() && s.back() == '_') s.pop_back();
  return s.empty() ? "prompt" : s;
}

std::string DemoSummary::missed() const {
  if (!check_targets) return "";
  std::string m;
  for (const DemoTarget& t : targets) {
    if (!t.gating || t.pass()) continue;
    m += fmt::format("{}{} {} {} {}", m.empty() ? "" : "; ", t.label, target_value(t, t.value),
                     t.higher_is_better ? "<" : ">", target_value(t, t.threshold));
  }
  return m;
}

void write_demo_images(const DemoSummary& s) {
  const fs::path out(s.out_dir);
  fs::create_directories(out / "grids");
  const ReconMetrics& r = s.eval.recon;
  if (r.originals.defined() && r.n > 0) {
    // Rows of 8: originals, then their reconstructions below; at most 32 pairs.
    const int64_t n = std::min<int64_t>(r.n, 32), per = 8;
    std::vector<Tensor> cells;
    for (int64_t b = 0; b < n; b += per)
      for (int pass = 0; pass < 2; ++pass)
        for (int64_t i = b; i < std::min(n, b + per); ++i)
          cells.push_back(row(pass ? r.reconstructions : r.originals, i));
    save_grid(out / "reconstructions.png", stack(cells), static_cast<int>(std::min(n, per)));
  }
  if (s.eval.generation) {
    const GenerationMetrics& g = *s.eval.generation;
    const int k = static_cast<int>(g.per_prompt);
    if (g.guided.images.defined()) save_grid(out / "generations_cfg.png", g.guided.images, k);
    if (g.unguided.images.defined()) save_grid(out / "generations_nocfg.png", g.unguided.images, k);
    if (g.guided.images.defined())
      for (size_t p = 0; p < g.prompts.size(); ++p) {
        Tensor imgs =
            g.guided.images.slice0(static_cast<int64_t>(p) * k, static_cast<int64_t>(p + 1) * k);
        save_grid(out / "grids" / fmt::format("{:02d}_{}.png", p, prompt_slug(g.prompts[p])), imgs,
                  std::min(k, 8));
      }
  }
  if (!s.edits.empty()) {
    std::vector<Tensor> cells;
    for (const DemoExample& e : s.edits) cells.push_back(e.source), cells.push_back(e.result);
    save_grid(out / "edit.png", stack(cells), 2);
  }
  if (!s.inpaints.empty()) {
    std::vector<Tensor> cells;
    for (const DemoExample& e : s.inpaints) {
      cells.push_back(e.source);
      cells.push_back(masked_view(e.source, e.mask));
      cells.push_back(e.result);
    }
    save_grid(out / "inpaint.png", stack(cells), 3);
  }
}

nlohmann::json demo_to_json(const DemoSummary& s) {
  nlohmann::json j;
  j["profile"] = s.profile;
  j["device"] = s.device;
  j["threads"] = s.threads;
  j["targets_checked"] = s.check_targets;
  bool met = true;
  for (const DemoTarget& t : s.targets)
    if (t.gating && !t.pass()) met = false;
  j["targets_met"] = met;

  // Wall time per stage, in seconds.
  nlohmann::json wall;
  for (const DemoStage& st : s.stages) wall[st.name] = st.seconds;
  wall["eval"] = s.eval_seconds;
  wall["examples"] = s.examples_seconds;
  wall["total"] = s.total_seconds;
  j["wall_seconds"] = wall;

  nlohmann::json stages = nlohmann::json::array();
  nlohmann::json params;
  for (const DemoStage& st : s.stages) {
    stages.push_back({{"name", st.name},
                      {"command", st.command},
                      {"run", st.run_dir},
                      {"checkpoint", st.checkpoint},
                      {"seconds", st.seconds},
                      {"reused", st.reused},
                      {"steps", st.steps},
                      {"parameters", st.parameters}});
    params[st.name] = st.parameters;
  }
  j["stages"] = stages;
  j["sizes"] = {{"image_size", s.image_size},
                {"dataset_images", s.dataset_images},
                {"latent", s.latent_shape.vec()},
                {"parameters", params}};

  const ReconMetrics& r = s.eval.recon;
  nlohmann::json rec = {{"n", r.n},
                        {"images", r.images},
                        {"psnr", r.psnr},
                        {"ssim", r.ssim},
                        {"fd_encoder", r.fd_encoder}};
  rec["analyser_accuracy"] = r.analyser ? accuracy_json(*r.analyser) : nlohmann::json(nullptr);
  j["reconstruction"] = rec;

  // The headline numbers, flat (README, CI): accuracies as fractions in [0, 1].
  nlohmann::json m = {{"psnr", r.psnr}, {"ssim", r.ssim}};
  if (s.eval.generation) {
    const GenerationMetrics& g = *s.eval.generation;
    m["accuracy_cfg"] = g.guided.accuracy.both_rate();
    m["accuracy_nocfg"] = g.unguided.accuracy.both_rate();
    m["fd_encoder_cfg"] = g.guided.fd_encoder;
    m["fd_encoder_nocfg"] = g.unguided.fd_encoder;
    m["fd_real_floor"] = g.fd_real_floor;
    nlohmann::json per = nlohmann::json::array();
    for (size_t p = 0; p < g.prompts.size(); ++p)
      per.push_back({{"prompt", g.prompts[p]},
                     {"cfg", accuracy_json(g.guided.per_prompt.at(p))},
                     {"nocfg", accuracy_json(g.unguided.per_prompt.at(p))},
                     {"grid", fmt::format("grids/{:02d}_{}.png", p, prompt_slug(g.prompts[p]))}});
    j["generation"] = {{"cond", g.cond_kind},
                       {"sampler", g.sampler},
                       {"steps", g.steps},
                       {"per_prompt", g.per_prompt},
                       {"cfg_scale", g.guided.cfg_scale},
                       {"cfg", accuracy_json(g.guided.accuracy)},
                       {"nocfg", accuracy_json(g.unguided.accuracy)},
                       {"fd_encoder_cfg", g.guided.fd_encoder},
                       {"fd_encoder_nocfg", g.unguided.fd_encoder},
                       {"fd_real_floor", g.fd_real_floor},
                       {"prompts", per}};
  } else {
    for (const char* k :
         {"accuracy_cfg", "accuracy_nocfg", "fd_encoder_cfg", "fd_encoder_nocfg", "fd_real_floor"})
      m[k] = nullptr;
    j["generation"] = nullptr;
  }
  j["metrics"] = m;
  j["edit"] = {{"method", s.edit_method},
               {"follow_rate", follow_rate(s.edits)},
               {"examples", examples_json(s.edits)}};
  j["inpaint"] = {{"follow_rate", follow_rate(s.inpaints)},
                  {"examples", examples_json(s.inpaints)}};

  nlohmann::json targets = nlohmann::json::array();
  for (const DemoTarget& t : s.targets)
    targets.push_back({{"key", t.key},
                       {"label", t.label},
                       {"value", t.value},
                       {"threshold", t.threshold},
                       {"higher_is_better", t.higher_is_better},
                       {"unit", t.unit},
                       {"gating", t.gating},
                       {"pass", t.pass()}});
  j["targets"] = targets;
  j["eval"] = eval_to_json(s.eval);
  return j;
}

void write_demo_report(const DemoSummary& s) {
  const fs::path out(s.out_dir);
  const std::string missed = s.missed();
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  h += "<title>psvae demo</title>\n<style>" + std::string(kCss) +
       "</style>\n</head>\n<body>\n<main>\n";

  std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  h += "<header>\n<h1>psvae demo</h1>\n";
  h += fmt::format(
      "<p class=\"meta\">encoder &rarr; S-VAE &rarr; PS-VAE &rarr; DiT on the built-in synthetic "
      "dataset ({} images {}x{}) &middot; profile <code>{}</code> &middot; device {} &middot; {} "
      "threads &middot; wall time {} &middot; written {}</p>\n",
      s.dataset_images, s.image_size, s.image_size, html_escape(s.profile), html_escape(s.device),
      s.threads, format_duration(s.total_seconds), when);
  if (!s.check_targets)
    h += "<p class=\"banner info\">Targets not checked (the --tiny profile trains for seconds; its "
         "numbers only show that every stage runs).</p>\n";
  else if (missed.empty())
    h += "<p class=\"banner pass\">Every target met.</p>\n";
  else
    h += "<p class=\"banner fail\">Missed: " + html_escape(missed) + "</p>\n";
  h += "</header>\n";

  // Metrics and targets.
  h += "<section>\n<h2>Metrics</h2>\n<table>\n<tr><th>metric</th><th>value</th><th>target</th>"
       "<th>result</th></tr>\n";
  for (const DemoTarget& t : s.targets) {
    std::string result = !t.gating  ? "<span class=\"info\">info</span>"
                         : t.pass() ? "<span class=\"pass\">pass</span>"
                                    : "<span class=\"fail\">miss</span>";
    if (t.gating && !s.check_targets) result = "<span class=\"info\">not checked</span>";
    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>\n",
                     html_escape(t.label), target_value(t, t.value),
                     t.higher_is_better ? "&ge;" : "&le;", target_value(t, t.threshold), result);
  }
  const ReconMetrics& r = s.eval.recon;
  h += fmt::format("<tr><td>reconstruction SSIM</td><td>{:.4f}</td><td></td><td></td></tr>\n",
                   r.ssim);
  if (r.analyser)
    h += fmt::format(
        "<tr><td>analyser on reconstructions (colour and shape survive)</td><td>{}</td><td></td>"
        "<td></td></tr>\n",
        pct(r.analyser->both_rate()));
  h += fmt::format(
      "<tr><td>FD on encoder features, reconstructions vs originals</td><td>{:.3f}</td><td></td>"
      "<td></td></tr>\n",
      r.fd_encoder);
  if (s.eval.generation) {
    const GenerationMetrics& g = *s.eval.generation;
    h += fmt::format(
        "<tr><td>conditional accuracy without guidance (colour, shape)</td><td>{} ({}, {})</td>"
        "<td></td><td></td></tr>\n",
        pct(g.unguided.accuracy.both_rate()), pct(g.unguided.accuracy.colour_rate()),
        pct(g.unguided.accuracy.shape_rate()));
    h += fmt::format(
        "<tr><td>FD on encoder features, generated vs real: guided / unguided</td><td>{:.3f} / "
        "{:.3f}</td><td></td><td></td></tr>\n",
        g.guided.fd_encoder, g.unguided.fd_encoder);
    h += fmt::format(
        "<tr><td>FD floor: two real sets of the same size</td><td>{:.3f}</td><td></td><td></td>"
        "</tr>\n",
        g.fd_real_floor);
  }
  h += "</table>\n";
  h += "<p class=\"meta\">" + html_escape(s.eval.features) +
       ". Every number is measured by this run; all of them are in <a "
       "href=\"metrics.json\">metrics.json</a>.</p>\n";
  h += "</section>\n";

  // Stages.
  h += "<section>\n<h2>Stages</h2>\n<table>\n<tr><th>stage</th><th>command</th><th>steps</th>"
       "<th>parameters</th><th>wall time</th><th>run</th></tr>\n";
  for (const DemoStage& st : s.stages)
    h += fmt::format(
        "<tr><td>{}</td><td><code>psvae {}</code></td><td>{}</td><td>{}</td><td>{}</td><td><a "
        "href=\"{}/report.html\">{}</a></td></tr>\n",
        html_escape(st.name), html_escape(st.command), st.steps, format_count(st.parameters),
        st.reused ? std::string("reused") : format_duration(st.seconds), html_escape(st.run_dir),
        html_escape(st.run_dir));
  h += fmt::format(
      "<tr><td>eval</td><td></td><td></td><td></td><td>{}</td><td></td></tr>\n"
      "<tr><td>examples</td><td></td><td></td><td></td><td>{}</td><td></td></tr>\n",
      format_duration(s.eval_seconds), format_duration(s.examples_seconds));
  h += "</table>\n";
  if (s.latent_shape.rank() == 3)
    h += fmt::format(
        "<p class=\"meta\">latent {} channels x {} x {} per image. Configs used: "
        "<code>configs/</code> in this folder.</p>\n",
        s.latent_shape[0], s.latent_shape[1], s.latent_shape[2]);
  h += "<p class=\"meta\">Parameters: the model in the stage's final checkpoint; the S-VAE stage's "
       "includes its frozen encoder, the PS-VAE's leaves out encoder_ref (the frozen copy of the "
       "stage-1 encoder that is only its semantic target).</p>\n";
  h += "</section>\n";

  // Curves: each stage's loss and its terms.
  h += "<section>\n<h2>Training curves</h2>\n<div class=\"panels\">\n";
  for (const DemoStage& st : s.stages) {
    const fs::path mj = out / st.run_dir / "metrics.jsonl";
    std::error_code ec;
    if (!fs::exists(mj, ec)) continue;
    std::vector<Series> all = read_metrics(mj.string()), panel;
    const std::vector<std::string> skip = {"lr",           "grad_norm", "steps_per_s",
                                           "images_per_s", "elapsed_s", "acc",
                                           "epoch",        "mem",       "memory"};
    for (const Series& x : all)
      if (std::find(skip.begin(), skip.end(), x.name) == skip.end()) panel.push_back(x);
    bool positive = true;
    for (const Series& x : panel)
      for (auto [step, v] : x.points) positive = positive && !(std::isfinite(v) && v <= 0);
    h += svg_plot(panel, fmt::format("{}: loss and its terms", st.name), positive);
    for (const Series& x : all)
      if (x.name == "acc") h += svg_plot({x}, st.name + ": batch accuracy", false);
  }
  h += "</div>\n</section>\n";

  // Reconstructions.
  h += "<section>\n<h2>Reconstructions (held out)</h2>\n";
  h += fmt::format(
      "<p class=\"meta\">{}: originals, and below each row their PS-VAE reconstructions "
      "(evaluation mode, z = mu). PSNR {:.2f} dB, SSIM {:.4f} over {} images.</p>\n",
      html_escape(r.images), r.psnr, r.ssim, r.n);
  h += "<img src=\"reconstructions.png\" alt=\"reconstructions\" width=\"" +
       std::to_string(8 * (s.image_size + 2) * 3) + "\">\n</section>\n";

  // Generations.
  if (s.eval.generation) {
    const GenerationMetrics& g = *s.eval.generation;
    h += "<section>\n<h2>Generations, one grid per prompt</h2>\n";
    h += fmt::format(
        "<p class=\"meta\">{} images per prompt, sampler {} with {} steps, the same starting "
        "noise with classifier-free guidance (scale {}) and without. The analyser "
        "(train/eval/analyser.h) reads the colour and shape of each image; accuracy = both "
        "right.</p>\n",
        g.per_prompt, html_escape(g.sampler), g.steps, g.guided.cfg_scale);
    h += "<table>\n<tr><th>prompt</th><th>guided</th><th>accuracy guided</th>"
         "<th>accuracy unguided</th></tr>\n";
    const int k = static_cast<int>(g.per_prompt), cols = std::min(k, 8);
    for (size_t p = 0; p < g.prompts.size(); ++p)
      h += fmt::format(
          "<tr><td>{}</td><td><img src=\"grids/{:02d}_{}.png\" alt=\"{}\" width=\"{}\"></td>"
          "<td>{}</td><td>{}</td></tr>\n",
          html_escape(g.prompts[p]), p, prompt_slug(g.prompts[p]), html_escape(g.prompts[p]),
          cols * (s.image_size + 2) * 2, pct(g.guided.per_prompt.at(p).both_rate()),
          pct(g.unguided.per_prompt.at(p).both_rate()));
    h += "</table>\n<h3>Without guidance (same noise), one row per prompt</h3>\n";
    h += "<img src=\"generations_nocfg.png\" alt=\"unguided generations\" width=\"" +
         std::to_string(k * (s.image_size + 2) * 2) + "\">\n</section>\n";
  }

  auto example_table = [&](const std::vector<DemoExample>& ex, const std::string& img,
                           const std::string& cols) {
    std::string t =
        "<table>\n<tr><th>source caption</th><th>prompt</th><th>analyser sees</th>"
        "<th>follows</th></tr>\n";
    for (const DemoExample& e : ex)
      t += fmt::format(
          "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n", html_escape(e.source_caption),
          html_escape(e.prompt), analysis_text(e.analysis),
          e.follows() ? "<span class=\"pass\">yes</span>" : "<span class=\"fail\">no</span>");
    t += "</table>\n<p class=\"meta\">" + cols +
         " (one example per row, in the table's order)</p>\n";
    t += "<img src=\"" + img + "\" alt=\"" + img + "\">\n";
    return t;
  };
  if (!s.edits.empty()) {
    h += "<section>\n<h2>Editing</h2>\n<p class=\"meta\">" + html_escape(s.edit_method) +
         ": each held-out image is steered to a new colour and shape at the same place.</p>\n";
    h += example_table(s.edits, "edit.png", "source | edited") + "</section>\n";
  }
  if (!s.inpaints.empty()) {
    h += "<section>\n<h2>Inpainting</h2>\n<p class=\"meta\">The object's box is regenerated "
         "(grey in the middle column) following the prompt; the pixels outside it are kept.</p>\n";
    h += example_table(s.inpaints, "inpaint.png", "source | region to regenerate | result") +
         "</section>\n";
  }

  // Reproduce.
  h +=
      "<section>\n<h2>Reproduce</h2>\n<p>The stages ran with the configs in <code>configs/</code> "
      "of this folder (the repository's <code>configs/demo-*.yaml</code> as compiled into the "
      "binary, plus the profile's overrides, listed in each run's <code>config.yaml</code>).</p>\n";
  if (const DemoStage* d = find_stage(s, "dit"))
    h += "<p>Generate more: <code>psvae generate --dit " + html_escape(d->run_dir) +
         " --prompt \"a red circle on the left\" --out grid.png</code> (run in this folder).</p>\n";
  h += "</section>\n</main>\n</body>\n</html>\n";
  write_file_atomic((out / "report.html").string(), h);
}

}  // namespace psvae::train
