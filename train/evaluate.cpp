#include "train/evaluate.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "autograd/grad_mode.h"
#include "dit/sampling.h"
#include "kernels/ops.h"
#include "psvae/dinov2.h"
#include "psvae/inception.h"
#include "psvae/interpolate.h"
#include "psvae/lpips.h"
#include "psvae/psvae.h"
#include "train/data/dataset.h"
#include "train/eval/frechet.h"
#include "train/metrics.h"
#include "train/pipeline.h"
#include "train/tasks/model_keys.h"
#include "train/tasks/psvae_task.h"
#include "train/tasks/svae_task.h"

namespace psvae::train {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

constexpr int kDinoSize = 224;  // FD-DINOv2's input side (Stein et al. 2023): 16x16 patches of 14

// ---- models ------------------------------------------------------------------------------------

// The stage-2 PS-VAE and the data keys it was trained with.
struct PsvaeRun {
  std::shared_ptr<PSVAE> model;
  Config cfg{psvae_stage_schema()};  // the checkpoint's model.* and data.* values
  std::string path;
};

PsvaeRun load_psvae(const std::string& path, Device dev) {
  StageCheckpoint ck = read_stage_checkpoint_file(path);
  if (ck.task_name != "psvae")
    throw std::runtime_error(
        fmt::format("{}: a checkpoint of task '{}'; eval needs a stage-2 PS-VAE checkpoint (psvae "
                    "train-psvae)",
                    ck.path, ck.task_name.empty() ? "?" : ck.task_name));
  PsvaeRun r;
  r.path = ck.path;
  inherit_arch_keys(r.cfg, ck, {"model.", "data."});
  const PSVAEConfig c = psvae_config(r.cfg);
  Generator g(0);  // every weight is loaded below
  r.model = std::make_shared<PSVAE>(c, g);
  try {
    r.model->load_state_dict(ck.model, true);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format(
        "{}: its weights do not fit the model of its saved config: {}", ck.path, e.what()));
  }
  r.model->set_requires_grad(false);
  r.model->to(dev);
  r.model->eval();
  return r;
}

// LPIPS from its weight files, the network and width read off the files as `psvae reconstruct`
// does. nullptr (with load()'s warning) when no backbone is among them.
std::shared_ptr<LPIPS> load_lpips(const std::vector<std::string>& files, Device dev) {
  LPIPS::Config lc;
  for (const std::string& p : files) {
    auto f = safetensors::File::open(p);
    if (f->contains("features.10.weight") && !f->contains("features.28.weight"))
      lc.net = LPIPS::Net::alex;  // AlexNet's last conv is features.10, VGG16's features.28
    if (f->contains("lin0.model.1.weight")) {
      const Shape& s = f->info("lin0.model.1.weight").shape;
      if (s.rank() == 4 && s[1] > 0 && 64 % s[1] == 0) lc.width_div = static_cast<int>(64 / s[1]);
    }
  }
  auto m = LPIPS::load(lc, files);
  if (!m->enabled()) return nullptr;
  m->to(dev);
  return m;
}

std::shared_ptr<Dinov2> load_dinov2_file(const std::string& path, Device dev) {
  safetensors::NamedTensors sd = safetensors::load(path);
  std::shared_ptr<Dinov2> m;
  try {
    Generator g(0);
    m = std::make_shared<Dinov2>(infer_dinov2_config(sd), g);
    load_dinov2(*m, sd);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: DINOv2 weights: {}", path, e.what()));
  }
  m->set_requires_grad(false);
  m->to(dev);
  m->eval();
  return m;
}

// ---- images ------------------------------------------------------------------------------------

struct RealImages {
  Tensor images;                     // (n,3,S,S) f32 CPU
  std::vector<SyntheticInfo> truth;  // synthetic only
  std::string where;
};

Tensor stack(const std::vector<Tensor>& images) {
  const Shape& s = images.front().shape();
  Tensor b = Tensor::empty({static_cast<int64_t>(images.size()), s[0], s[1], s[2]}, DType::F32);
  const int64_t per = images.front().numel();
  for (size_t i = 0; i < images.size(); ++i)
    std::memcpy(b.data<float>() + static_cast<int64_t>(i) * per,
                images[i].to(Device::cpu()).data<float>(), static_cast<size_t>(per) * 4);
  return b;
}

// n synthetic images of `seed`, with their ground truth.
RealImages synthetic_set(int size, uint64_t seed, int64_t n) {
  SyntheticOptions so;
  so.num_images = n;
  so.image_size = size;
  so.seed = seed;
  std::unique_ptr<Dataset> ds = make_synthetic(so);
  RealImages r;
  std::vector<Tensor> v;
  for (int64_t i = 0; i < n; ++i) {
    v.push_back(ds->get(i).image);
    r.truth.push_back(synthetic_info(so, i));
  }
  r.images = stack(v);
  return r;
}

// The held-out images of the PS-VAE's dataset (see evaluate.h).
RealImages held_out(const Config& cfg, int64_t n) {
  const std::string kind = cfg.get_string("data.dataset");
  const int size = static_cast<int>(cfg.get_int("data.image_size"));
  if (kind == "synthetic") {
    const uint64_t seed = held_out_seed(static_cast<uint64_t>(cfg.get_int("data.seed")));
    RealImages r = synthetic_set(size, seed, n);
    r.where = fmt::format("synthetic seed {} (held out)", seed);
    return r;
  }
  std::unique_ptr<Dataset> ds;
  std::string where;
  const std::string path = cfg.get_string("data.path");
  if (kind == "cifar10") {
    ds = make_cifar10(path, /*train=*/false, size);
    where = fmt::format("cifar10 test split {} (held out)", path);
  } else {
    ds = make_image_folder(path, size);
    where = fmt::format("image folder {} (the training images: not held out)", path);
  }
  RealImages r;
  std::vector<Tensor> v;
  for (int64_t i = 0; i < std::min(n, ds->size()); ++i) v.push_back(ds->get(i).image);
  if (v.empty()) throw std::runtime_error(fmt::format("{}: no images to evaluate on", where));
  r.images = stack(v);
  r.where = where;
  return r;
}

// Applies f to batches of images (CPU) moved to `dev`; concatenates the (m, D) results on the CPU
// as f32.
Tensor batched(const Tensor& images, int64_t batch, Device dev,
               const std::function<Tensor(const Tensor&)>& f) {
  ag::NoGradGuard no_grad;
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < images.size(0); i += batch) {
    const int64_t e = std::min(images.size(0), i + batch);
    parts.push_back(ops::cast(f(images.slice0(i, e).to(dev)), DType::F32).to(Device::cpu()));
  }
  return parts.size() == 1 ? parts.front() : ops::concat(parts, 0);
}

// The analyser on every image of (n,3,S,S) CPU images; images are independent and the analyser
// is a pure function, so they are spread over the threads.
std::vector<Analysis> analyse_all(const Tensor& images) {
  const int64_t n = images.size(0);
  std::vector<Analysis> out(static_cast<size_t>(n));
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < n; ++i)
    out[static_cast<size_t>(i)] = analyse_synthetic(
        images.slice0(i, i + 1).reshape({images.size(1), images.size(2), images.size(3)}));
  return out;
}

// ---- features ----------------------------------------------------------------------------------

// [CLS, mean patch token] of the PS-VAE's frozen encoder_ref: (n, 2D).
Tensor encoder_features(const PSVAE& m, const Tensor& images, int64_t batch, Device dev) {
  return batched(images, batch, dev, [&](const Tensor& x) {
    Dinov2Output o = m.encoder_ref->forward(imagenet_normalize(ag::Var(x)));
    const Tensor& p = o.patch.data();  // (N,h,w,D)
    Tensor mean = ops::mean(p.reshape({p.size(0), p.size(1) * p.size(2), p.size(3)}), 1);
    return ops::concat({o.cls.data(), mean}, 1);
  });
}

// (N,3,H,W) -> (N,3,S,S), bicubic (align_corners false), as torchvision's Resize on tensors.
Tensor resize_bicubic_nchw(const Tensor& x, int64_t s) {
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  Tensor hwc = ops::permute(x.reshape({n * 3, h, w}), {1, 2, 0});  // (H, W, 3N)
  Tensor r = interp::resize_bicubic(ag::Var(hwc), s, s, {}).data();
  return ops::permute(r, {2, 0, 1}).reshape({n, 3, s, s});
}

// DINOv2 CLS features at 224x224: (n, D).
Tensor dinov2_features(const Dinov2& m, const Tensor& images, int64_t batch, Device dev) {
  return batched(images, batch, dev, [&](const Tensor& x) {
    Tensor r =
        x.size(2) == kDinoSize && x.size(3) == kDinoSize ? x : resize_bicubic_nchw(x, kDinoSize);
    return m.forward(imagenet_normalize(ag::Var(r))).cls.data();
  });
}

// The feature sets of one image set, for every extractor given.
struct Extractors {
  const PSVAE* psvae = nullptr;
  std::shared_ptr<Dinov2> dinov2;
  std::shared_ptr<InceptionV3> inception;
  int64_t batch = 32;
  Device dev;
};
// Feature sets (n, D) f32 CPU; the distances use frechet_distance on the sets
// (train/eval/frechet.h: exact, and without D x D eigenproblems when there are fewer images than
// dimensions).
struct Features {
  Tensor encoder;
  std::optional<Tensor> dinov2, inception;
};
Features features_of(const Extractors& e, const Tensor& images) {
  Features f;
  f.encoder = encoder_features(*e.psvae, images, e.batch, e.dev);
  if (e.dinov2) f.dinov2 = dinov2_features(*e.dinov2, images, e.batch, e.dev);
  if (e.inception)
    f.inception =
        batched(images, e.batch, e.dev, [&](const Tensor& x) { return e.inception->forward(x); });
  return f;
}

std::optional<double> fd_opt(const std::optional<Tensor>& a, const std::optional<Tensor>& b) {
  if (!a || !b) return std::nullopt;
  return frechet_distance(*a, *b);
}

// ---- JSON and table ----------------------------------------------------------------------------

nlohmann::json num(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? nlohmann::json("nan") : nlohmann::json(v > 0 ? "inf" : "-inf");
}
nlohmann::json num(const std::optional<double>& v) { return v ? num(*v) : nlohmann::json(); }

nlohmann::json accuracy_json(const Accuracy& a) {
  return {{"n", a.n},
          {"colour", a.colour},
          {"shape", a.shape},
          {"both", a.both},
          {"none", a.none},
          {"colour_rate", a.colour_rate()},
          {"shape_rate", a.shape_rate()},
          {"both_rate", a.both_rate()}};
}

nlohmann::json run_json(const GenerationRun& r, const std::vector<std::string>& prompts) {
  nlohmann::json per = nlohmann::json::array();
  for (size_t i = 0; i < r.per_prompt.size(); ++i) {
    nlohmann::json j = accuracy_json(r.per_prompt[i]);
    j["prompt"] = prompts[i];
    per.push_back(j);
  }
  return {{"cfg_scale", r.cfg_scale},
          {"accuracy", accuracy_json(r.accuracy)},
          {"fd_encoder", num(r.fd_encoder)},
          {"fd_dinov2", num(r.fd_dinov2)},
          {"fid", num(r.fid)},
          {"seconds", r.seconds},
          {"per_prompt", per}};
}

const char* objective_name(dit::Objective o) {
  return o == dit::Objective::eps ? "eps" : o == dit::Objective::v ? "v" : "flow";
}

std::string pct(double v) { return fmt::format("{:.1f}%", 100.0 * v); }
std::string opt_str(const std::optional<double>& v, const char* f = "{:.3f}") {
  return v ? fmt::format(fmt::runtime(f), *v) : std::string("n/a");
}

}  // namespace

void Accuracy::add(const Analysis& a, int colour_truth, int shape_truth) {
  ++n;
  colour += a.colour == colour_truth;
  shape += a.shape == shape_truth;
  both += a.colour == colour_truth && a.shape == shape_truth;
  none += a.colour < 0;
}

std::vector<std::string> synthetic_prompts() {
  std::vector<std::string> p;
  for (int c = 0; c < kSyntheticNumColours; ++c)
    for (int s = 0; s < kSyntheticNumShapes; ++s)
      p.push_back(fmt::format("a {} {}", synthetic_colour_name(c), synthetic_shape_name(s)));
  return p;
}

EvalResult evaluate(const EvalOptions& o) {
  const auto t_start = Clock::now();
  if (o.psvae.empty()) throw std::invalid_argument("eval: no PS-VAE checkpoint given");
  if (o.num_recon < 2)
    throw std::invalid_argument(fmt::format("eval: num_recon {} < 2", o.num_recon));
  if (o.batch < 1) throw std::invalid_argument(fmt::format("eval: batch {} < 1", o.batch));
  if (!o.dit.empty() && (o.per_prompt < 1 || o.steps < 1))
    throw std::invalid_argument(
        fmt::format("eval: per_prompt {} and steps {} must be >= 1", o.per_prompt, o.steps));
  auto say = [&](const std::string& line) {
    if (o.verbose) {
      fmt::print("eval: {}\n", line);
      std::fflush(stdout);
    }
  };

  EvalResult r;
  r.options = o;
  PsvaeRun ps = load_psvae(o.psvae, o.device);
  r.psvae_path = ps.path;
  r.features = "encoder_ref of the PS-VAE: [CLS token, mean patch token] per image (2 x " +
               std::to_string(ps.model->config().encoder.dim) + " values)";

  Extractors ex;
  ex.psvae = ps.model.get();
  ex.batch = o.batch;
  ex.dev = o.device;
  if (!o.dinov2.empty()) ex.dinov2 = load_dinov2_file(o.dinov2, o.device);
  if (!o.inception.empty()) {
    ex.inception = InceptionV3::load(o.inception);
    ex.inception->to(o.device);
  }
  std::shared_ptr<LPIPS> lpips = o.lpips.empty() ? nullptr : load_lpips(o.lpips, o.device);

  // ---- reconstruction
  auto t0 = Clock::now();
  RealImages real = held_out(ps.cfg, o.num_recon);
  ReconMetrics& rec = r.recon;
  rec.n = real.images.size(0);
  rec.image_size = static_cast<int>(real.images.size(2));
  rec.images = real.where;
  rec.originals = real.images;
  say(fmt::format("reconstructing {} images: {}", rec.n, rec.images));
  rec.reconstructions = batched(real.images, o.batch, o.device, [&](const Tensor& x) {
    return ops::clamp(ps.model->forward(ag::Var(x), nullptr).pixels.data(), -1.0, 1.0);
  });
  rec.psnr = mean_of(psnr(rec.originals, rec.reconstructions));
  rec.ssim = mean_of(ssim(rec.originals, rec.reconstructions));
  if (lpips) {
    std::vector<double> d;
    for (int64_t i = 0; i < rec.n; i += o.batch) {
      const int64_t e = std::min(rec.n, i + o.batch);
      ag::NoGradGuard no_grad;
      Tensor v = lpips
                     ->forward(ag::Var(rec.originals.slice0(i, e).to(o.device)),
                               ag::Var(rec.reconstructions.slice0(i, e).to(o.device)))
                     .data();
      for (double x : ops::cast(v, DType::F64).to_vector<double>()) d.push_back(x);
    }
    rec.lpips = mean_of(d);
  }
  if (!real.truth.empty()) {
    Accuracy acc;
    const std::vector<Analysis> a = analyse_all(rec.reconstructions);
    for (size_t i = 0; i < a.size(); ++i) acc.add(a[i], real.truth[i].colour, real.truth[i].shape);
    rec.analyser = acc;
  }
  const Features real_f = features_of(ex, rec.originals);
  const Features recon_f = features_of(ex, rec.reconstructions);
  rec.fd_encoder = frechet_distance(recon_f.encoder, real_f.encoder);
  rec.fd_dinov2 = fd_opt(recon_f.dinov2, real_f.dinov2);
  rec.fid = fd_opt(recon_f.inception, real_f.inception);
  say(fmt::format("reconstruction: PSNR {:.2f} dB, SSIM {:.4f} ({:.1f} s)", rec.psnr, rec.ssim,
                  since(t0)));

  // ---- generation
  if (!o.dit.empty()) {
    Pipeline p = Pipeline::load(o.dit, o.psvae, o.device);
    r.dit_path = p.dit_path;
    const std::string data = p.dit_config.get_string("data.dataset");
    if (data != "synthetic")
      throw std::runtime_error(fmt::format(
          "{}: a DiT of the {} dataset; generation metrics need the synthetic dataset (the "
          "analyser scores its 24 prompts)",
          p.dit_path, data));
    if (p.image_size != rec.image_size)
      throw std::runtime_error(
          fmt::format("{}: generates {}x{} images but the PS-VAE {} makes {}x{}", p.dit_path,
                      p.image_size, p.image_size, ps.path, rec.image_size, rec.image_size));
    GenerationMetrics gm;
    gm.prompts = synthetic_prompts();
    for (const std::string& s : gm.prompts) gm.targets.push_back(parse_synthetic_prompt(s));
    const dit::CondKind kind = p.model->config().kind;
    gm.cond_kind = dit::cond_kind_name(kind);
    gm.steps = o.steps;
    gm.per_prompt = o.per_prompt;
    dit::SampleOptions so;
    so.sampler = o.sampler.empty()
                     ? (p.setup.objective == dit::Objective::flow ? dit::SamplerKind::euler
                                                                  : dit::SamplerKind::ddim)
                     : dit::parse_sampler(o.sampler);
    if (!dit::sampler_fits(so.sampler, p.setup.objective))
      throw std::invalid_argument(fmt::format(
          "eval: sampler {} does not fit the DiT's objective {} ({})",
          dit::sampler_name(so.sampler), objective_name(p.setup.objective), p.dit_path));
    so.steps = o.steps;
    gm.sampler = dit::sampler_name(so.sampler);

    dit::Condition cond;
    const int64_t K = o.per_prompt;
    for (const PromptTarget& t : gm.targets)
      for (int64_t k = 0; k < K; ++k) {
        if (kind == dit::CondKind::class_label)
          cond.labels.push_back(t.shape * kSyntheticNumColours + t.colour);
        else
          cond.captions.push_back(gm.prompts[cond.captions.size() / static_cast<size_t>(K)]);
      }
    const int64_t n_gen = cond.size();

    // The estimator's floor: as many training-seed images as each generated set, against the
    // held-out set.
    {
      RealImages other =
          synthetic_set(rec.image_size, static_cast<uint64_t>(ps.cfg.get_int("data.seed")), n_gen);
      gm.fd_real_floor = frechet_distance(
          encoder_features(*ps.model, other.images, o.batch, o.device), real_f.encoder);
    }

    for (GenerationRun* run : {&gm.guided, &gm.unguided}) {
      run->cfg_scale = run == &gm.guided ? o.cfg_scale : 1.0;
      say(fmt::format("generating {} images ({} prompts x {}), {} {} steps, cfg {}", n_gen,
                      gm.prompts.size(), K, gm.sampler, o.steps, run->cfg_scale));
      t0 = Clock::now();
      GenerateRequest req;
      req.cond = cond;
      req.sampling = so;
      req.guidance.scale = run->cfg_scale;
      req.seed = o.seed;
      req.batch = o.batch;
      run->images = ops::cast(generate(p, req), DType::F32).to(Device::cpu());
      run->seconds = since(t0);
      run->per_prompt.assign(gm.prompts.size(), Accuracy{});
      run->analyses = analyse_all(run->images);
      for (int64_t i = 0; i < n_gen; ++i) {
        const PromptTarget& t = gm.targets[static_cast<size_t>(i / K)];
        const Analysis& a = run->analyses[static_cast<size_t>(i)];
        run->accuracy.add(a, t.colour, t.shape);
        run->per_prompt[static_cast<size_t>(i / K)].add(a, t.colour, t.shape);
      }
      const Features gf = features_of(ex, run->images);
      run->fd_encoder = frechet_distance(gf.encoder, real_f.encoder);
      run->fd_dinov2 = fd_opt(gf.dinov2, real_f.dinov2);
      run->fid = fd_opt(gf.inception, real_f.inception);
      say(fmt::format("cfg {}: accuracy {} (colour {}, shape {}), FD {:.3f} ({:.1f} s)",
                      run->cfg_scale, pct(run->accuracy.both_rate()),
                      pct(run->accuracy.colour_rate()), pct(run->accuracy.shape_rate()),
                      run->fd_encoder, run->seconds));
    }
    r.generation = std::move(gm);
  }
  r.seconds = since(t_start);
  return r;
}

nlohmann::json eval_to_json(const EvalResult& r) {
  const EvalOptions& o = r.options;
  nlohmann::json j;
  j["settings"] = {{"psvae", o.psvae},         {"dit", o.dit},
                   {"num_recon", o.num_recon}, {"per_prompt", o.per_prompt},
                   {"cfg_scale", o.cfg_scale}, {"steps", o.steps},
                   {"sampler", o.sampler},     {"seed", o.seed},
                   {"batch", o.batch},         {"lpips", o.lpips},
                   {"dinov2", o.dinov2},       {"inception", o.inception},
                   {"device", o.device.str()}};
  j["psvae"] = r.psvae_path;
  j["dit"] = r.dit_path.empty() ? nlohmann::json() : nlohmann::json(r.dit_path);
  j["features"] = r.features;
  const ReconMetrics& rec = r.recon;
  j["reconstruction"] = {
      {"n", rec.n},
      {"image_size", rec.image_size},
      {"images", rec.images},
      {"psnr", num(rec.psnr)},
      {"ssim", num(rec.ssim)},
      {"lpips", num(rec.lpips)},
      {"analyser", rec.analyser ? accuracy_json(*rec.analyser) : nlohmann::json()},
      {"fd_encoder", num(rec.fd_encoder)},
      {"fd_dinov2", num(rec.fd_dinov2)},
      {"fid", num(rec.fid)}};
  if (r.generation) {
    const GenerationMetrics& g = *r.generation;
    j["generation"] = {{"prompts", g.prompts},
                       {"cond_kind", g.cond_kind},
                       {"sampler", g.sampler},
                       {"steps", g.steps},
                       {"per_prompt", g.per_prompt},
                       {"fd_real_floor", num(g.fd_real_floor)},
                       {"guided", run_json(g.guided, g.prompts)},
                       {"unguided", run_json(g.unguided, g.prompts)}};
  } else {
    j["generation"] = nullptr;
  }
  j["seconds"] = r.seconds;
  return j;
}

std::string format_eval_table(const EvalResult& r) {
  const ReconMetrics& rec = r.recon;
  std::string s = fmt::format("reconstruction: {} images {}x{}, {}\n", rec.n, rec.image_size,
                              rec.image_size, rec.images);
  s += fmt::format("  {:<22}{:.3f} dB\n", "PSNR", rec.psnr);
  s += fmt::format("  {:<22}{:.4f}\n", "SSIM", rec.ssim);
  s += fmt::format("  {:<22}{}\n", "LPIPS", opt_str(rec.lpips, "{:.4f}"));
  if (rec.analyser)
    s += fmt::format("  {:<22}{} (colour {}, shape {})\n", "analyser accuracy",
                     pct(rec.analyser->both_rate()), pct(rec.analyser->colour_rate()),
                     pct(rec.analyser->shape_rate()));
  s += fmt::format("  {:<22}{:.3f}\n", "FD encoder (rFD)", rec.fd_encoder);
  s += fmt::format("  {:<22}{}\n", "FD-DINOv2", opt_str(rec.fd_dinov2));
  s += fmt::format("  {:<22}{}\n", "FID (rFID)", opt_str(rec.fid));
  if (!r.generation) return s;
  const GenerationMetrics& g = *r.generation;
  s += fmt::format("generation: {} prompts x {} images, {} {} steps, {} conditioning\n",
                   g.prompts.size(), g.per_prompt, g.sampler, g.steps, g.cond_kind);
  s += fmt::format("  {:<22}{:>14}{:>14}\n", "", fmt::format("cfg {:g}", g.guided.cfg_scale),
                   "no guidance");
  auto row = [&](const char* name, const std::string& a, const std::string& b) {
    s += fmt::format("  {:<22}{:>14}{:>14}\n", name, a, b);
  };
  row("accuracy (both)", pct(g.guided.accuracy.both_rate()), pct(g.unguided.accuracy.both_rate()));
  row("  colour", pct(g.guided.accuracy.colour_rate()), pct(g.unguided.accuracy.colour_rate()));
  row("  shape", pct(g.guided.accuracy.shape_rate()), pct(g.unguided.accuracy.shape_rate()));
  row("FD encoder", fmt::format("{:.3f}", g.guided.fd_encoder),
      fmt::format("{:.3f}", g.unguided.fd_encoder));
  row("FD-DINOv2", opt_str(g.guided.fd_dinov2), opt_str(g.unguided.fd_dinov2));
  row("FID", opt_str(g.guided.fid), opt_str(g.unguided.fid));
  row("seconds", fmt::format("{:.1f}", g.guided.seconds),
      fmt::format("{:.1f}", g.unguided.seconds));
  s += fmt::format("  FD encoder between two real sets of this size: {:.3f} (the floor)\n",
                   g.fd_real_floor);
  return s;
}

}  // namespace psvae::train
