// `psvae generate | edit | inpaint`: the trained stack at work (train/pipeline.h).
//
//   generate  --prompt TEXT (repeatable) or --class N (repeatable): --num images each, one grid row
//             per prompt, written as OUT (the grid) and OUT_000.png, OUT_001.png, ... (every image,
//             prompt-major)
//   edit      --image IN --prompt TEXT: SDEdit (encode, noise to --strength, denoise with the
//             prompt, decode) or --method invert (DDIM / Euler inversion with --source-prompt,
//             then guided regeneration with the prompt) -> OUT
//   inpaint   --image IN --mask M --prompt TEXT: the white part of the mask regenerated, the black
//             part kept exactly -> OUT
// Images are resized (short side) and centre-cropped to the PS-VAE's image size; the mask gets
// the same resize and crop, then a pixel is regenerated when its grey level is above one half.
// Every PNG is written atomically. Exit 2 for a command line that does not fit the model (a
// prompt for a class model, a class out of range, a sampler of the other family), 1 for a failed
// run (a missing or bad file).
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "train/cli.h"
#include "train/image_io.h"
#include "train/pipeline.h"

namespace psvae::train {

namespace {

namespace fs = std::filesystem;

// The flags every inference command takes.
struct InferenceFlags {
  std::string dit, psvae, out, negative, sampler, cfg_interval, device = "auto";
  std::vector<std::string> prompts;
  std::vector<int64_t> classes;
  int steps = 50, threads = 0;
  bool bf16 = false;
  double eta = 0.0, cfg_scale = 4.0;
  int64_t seed = 0, batch = 16;
};

void add_inference_flags(CLI::App& app, InferenceFlags& f, bool many_prompts) {
  app.add_option("--dit", f.dit, "train-dit run folder (its newest checkpoint) or checkpoint file")
      ->type_name("RUN_OR_CKPT")
      ->required();
  app.add_option("--psvae", f.psvae,
                 "train-psvae checkpoint or run folder, when the one the DiT run names has moved")
      ->type_name("CKPT");
  auto* p = app.add_option("--prompt", f.prompts,
                           many_prompts ? "caption to generate (text models); repeatable: one "
                                          "grid row per prompt"
                                        : "caption to follow (text models)")
                ->type_name("TEXT")
                ->allow_extra_args(false);
  auto* c = app.add_option("--class", f.classes,
                           many_prompts ? "class label to generate (class models); repeatable"
                                        : "class label to follow (class models)")
                ->type_name("N")
                ->allow_extra_args(false);
  if (many_prompts) {
    p->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    c->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  } else {
    p->multi_option_policy(CLI::MultiOptionPolicy::Throw);
    c->multi_option_policy(CLI::MultiOptionPolicy::Throw);
  }
  p->excludes(c);
  c->excludes(p);
  app.add_option("--negative-prompt", f.negative,
                 "caption the guidance steers away from (text models; default: the empty caption)")
      ->type_name("TEXT");
  app.add_option("--steps", f.steps, "sampler steps")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--sampler", f.sampler,
                 "ddim, ddpm or dpmpp-2m (eps / v models; default ddim); euler or heun (flow "
                 "models; default euler)")
      ->check(CLI::IsMember({"ddim", "ddpm", "dpmpp-2m", "dpm++2m", "euler", "heun"}));
  app.add_option("--eta", f.eta, "DDIM noise: 0 deterministic, 1 as DDPM")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--cfg-scale", f.cfg_scale, "classifier-free guidance scale; 1 = no guidance")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app.add_option("--cfg-interval", f.cfg_interval,
                 "guide only while the normalised time (1 = noise, 0 = data) is in [LO, HI]")
      ->type_name("LO,HI");
  app.add_option("--seed", f.seed, "noise seed: image i uses the noise of (seed, i)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--device", f.device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  app.add_option("--threads", f.threads, "CPU threads; 0 = every core")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--bf16", f.bf16,
               "run the DiT's matmuls and attention in bf16 (autocast; fast on CUDA, slower than "
               "f32 on the CPU); the sampler and the decoder stay f32");
}

dit::GuidanceConfig parse_guidance(const InferenceFlags& f) {
  dit::GuidanceConfig g;
  g.scale = f.cfg_scale;
  if (f.cfg_interval.empty()) return g;
  const size_t comma = f.cfg_interval.find(',');
  try {
    size_t used_lo = 0, used_hi = 0;
    if (comma == std::string::npos) throw std::invalid_argument("no comma");
    const std::string lo = f.cfg_interval.substr(0, comma), hi = f.cfg_interval.substr(comma + 1);
    g.t_lo = std::stod(lo, &used_lo);
    g.t_hi = std::stod(hi, &used_hi);
    if (used_lo != lo.size() || used_hi != hi.size()) throw std::invalid_argument("trailing text");
  } catch (const std::exception&) {
    throw UsageError(
        fmt::format("--cfg-interval '{}': expects LO,HI, e.g. 0.1,0.9", f.cfg_interval));
  }
  if (!(g.t_lo >= 0 && g.t_lo <= g.t_hi && g.t_hi <= 1))
    throw UsageError(fmt::format("--cfg-interval '{}': needs 0 <= LO <= HI <= 1", f.cfg_interval));
  return g;
}

// The sampler options of the flags for this model: the default sampler of its objective, and a
// usage error naming both when the chosen one belongs to the other family.
dit::SampleOptions parse_sampling(const InferenceFlags& f, const Pipeline& p) {
  dit::SampleOptions o;
  const bool flow = p.setup.objective == dit::Objective::flow;
  o.sampler = f.sampler.empty() ? (flow ? dit::SamplerKind::euler : dit::SamplerKind::ddim)
                                : dit::parse_sampler(f.sampler);
  o.steps = f.steps;
  o.eta = f.eta;
  const char* objective = flow ? "flow" : p.setup.objective == dit::Objective::v ? "v" : "eps";
  if (!dit::sampler_fits(o.sampler, p.setup.objective))
    throw UsageError(fmt::format("--sampler {} does not fit the {} objective of {} (use {})",
                                 dit::sampler_name(o.sampler), objective, p.dit_path,
                                 flow ? "euler or heun" : "ddim, ddpm or dpmpp-2m"));
  if (o.eta != 0 && o.sampler != dit::SamplerKind::ddim)
    throw UsageError(
        fmt::format("--eta {} applies to --sampler ddim only, not {}", o.eta, f.sampler));
  if (!flow && o.steps > p.setup.num_train_steps)
    throw UsageError(
        fmt::format("--steps {} exceeds the {} diffusion steps the DiT was trained with", o.steps,
                    p.setup.num_train_steps));
  return o;
}

// One condition per entry of the flags (prompts or classes), checked against the model's kind.
dit::Condition parse_conditions(const InferenceFlags& f, const Pipeline& p) {
  const auto& mc = p.model->config();
  const bool class_model = mc.kind == dit::CondKind::class_label;
  dit::Condition c;
  if (class_model) {
    if (!f.prompts.empty())
      throw UsageError(
          fmt::format("--prompt: the DiT {} is class-conditional; give --class N (0..{})",
                      p.dit_path, mc.dit.num_classes - 1));
    if (f.classes.empty())
      throw UsageError(fmt::format("give --class N (0..{}): the DiT {} is class-conditional",
                                   mc.dit.num_classes - 1, p.dit_path));
    for (int64_t k : f.classes)
      if (k < 0 || k >= mc.dit.num_classes)
        throw UsageError(fmt::format("--class {} is outside 0..{} (the classes of the DiT {})", k,
                                     mc.dit.num_classes - 1, p.dit_path));
    c.labels = f.classes;
  } else {
    if (!f.classes.empty())
      throw UsageError(fmt::format("--class: the DiT {} is {}-conditional; give --prompt TEXT",
                                   p.dit_path, dit::cond_kind_name(mc.kind)));
    if (f.prompts.empty())
      throw UsageError(fmt::format("give --prompt TEXT: the DiT {} is {}-conditional", p.dit_path,
                                   dit::cond_kind_name(mc.kind)));
    c.captions = f.prompts;
  }
  if (!f.negative.empty() && class_model)
    throw UsageError(fmt::format("--negative-prompt: the DiT {} is class-conditional", p.dit_path));
  return c;
}

// The common start of the three commands: threads, device, the pipeline.
Pipeline open_pipeline(const InferenceFlags& f) {
  apply_threads(f.threads);
  const Device dev = resolve_device(f.device);
  Pipeline p = Pipeline::load(f.dit, f.psvae, dev);
  p.compute = f.bf16 ? DType::BF16 : DType::F32;
  fmt::print("dit: {} | psvae: {} | {}x{} images, latent {} | device {} | {} | threads {}\n",
             p.dit_path, p.psvae_path, p.image_size, p.image_size, p.latent_shape.str(), dev.str(),
             f.bf16 ? "bf16 autocast" : "f32", omp_get_max_threads());
  std::fflush(stdout);
  return p;
}

GenerateRequest make_request(const InferenceFlags& f, const Pipeline& p, dit::Condition cond) {
  GenerateRequest r;
  r.cond = std::move(cond);
  r.negative_prompt = f.negative;
  r.sampling = parse_sampling(f, p);
  r.guidance = parse_guidance(f);
  r.seed = static_cast<uint64_t>(f.seed);
  r.batch = f.batch;
  return r;
}

// (1,3,S,S) of an image file, resized and centre-cropped to the model's size.
Tensor load_input(const std::string& path, int size) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw std::runtime_error(fmt::format("{}: no such file", path));
  Tensor t = image_to_tensor(resize_center_crop(load_image(path), size));
  return t.reshape({1, 3, size, size});
}

// Row i of (N,3,H,W) as (3,H,W).
Tensor row(const Tensor& b, int64_t i) {
  return b.slice0(i, i + 1).reshape({b.size(1), b.size(2), b.size(3)});
}

void check_png_out(const std::string& out) {
  std::string ext = fs::path(out).extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (ext != ".png") throw UsageError(fmt::format("--out {}: must be a .png file", out));
  const fs::path parent = fs::path(out).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
}

std::string guidance_text(const dit::GuidanceConfig& g) {
  if (g.scale == 1.0) return "no guidance";
  return g.t_lo == 0 && g.t_hi == 1 ? fmt::format("cfg {}", g.scale)
                                    : fmt::format("cfg {} in [{}, {}]", g.scale, g.t_lo, g.t_hi);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  CLI::App app{
      "Generate images with a trained DiT and its PS-VAE: --num images per --prompt (text models) "
      "or --class (class models). Writes the grid OUT (one row per prompt) and every image as "
      "OUT_000.png, OUT_001.png, ... Image i uses the noise of (--seed, i), whatever --batch.",
      "psvae generate"};
  InferenceFlags f;
  int64_t num = 8;
  add_inference_flags(app, f, true);
  app.add_option("--num", num, "images per prompt or class")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--batch", f.batch, "images per model call")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--out", f.out, "the grid PNG; the images go beside it as OUT_000.png, ...")
      ->type_name("FILE.png")
      ->required();
  return run_cli(app, argc, argv, [&] {
    check_png_out(f.out);
    Pipeline p = open_pipeline(f);
    dit::Condition each = parse_conditions(f, p), all;
    const int64_t rows = each.size();
    for (int64_t k = 0; k < rows; ++k)
      for (int64_t j = 0; j < num; ++j) {
        if (!each.labels.empty()) all.labels.push_back(each.labels[static_cast<size_t>(k)]);
        if (!each.captions.empty()) all.captions.push_back(each.captions[static_cast<size_t>(k)]);
      }
    GenerateRequest r = make_request(f, p, all);
    const auto t0 = std::chrono::steady_clock::now();
    Tensor images = generate(p, r);
    const fs::path out(f.out);
    const std::string stem = (out.parent_path() / out.stem()).string();
    for (int64_t i = 0; i < images.size(0); ++i)
      save_png(fmt::format("{}_{:03d}.png", stem, i), tensor_to_image(row(images, i)));
    save_png(f.out, make_grid(images, static_cast<int>(num)));
    fmt::print(
        "generated {} images ({} x {}), {} {} steps, {}, seed {}: {} and {}_000.png ... in "
        "{:.1f} s ({} DiT evaluations)\n",
        images.size(0), rows, num, dit::sampler_name(r.sampling.sampler), r.sampling.steps,
        guidance_text(r.guidance), f.seed, f.out, stem, seconds_since(t0), p.evaluations);
    return 0;
  });
}

int cmd_edit(int argc, char** argv) {
  CLI::App app{
      "Edit an image towards a prompt. sdedit: encode with the PS-VAE, noise to --strength, "
      "denoise with the prompt (guided), decode. invert: invert the image's latent with "
      "--source-prompt (unguided) to --strength's noise level, then regenerate with the prompt.",
      "psvae edit"};
  InferenceFlags f;
  std::string image, method = "sdedit", source_prompt;
  int64_t source_class = -1;
  double strength = 0.6;
  add_inference_flags(app, f, false);
  app.add_option("--image", image, "the image to edit (PNG or JPEG)")->type_name("IN")->required();
  app.add_option("--strength", strength,
                 "how much of the trajectory is rerun: 0 keeps the image, 1 starts from noise")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--method", method, "sdedit or invert")
      ->check(CLI::IsMember({"sdedit", "invert"}))
      ->capture_default_str();
  app.add_option("--source-prompt", source_prompt,
                 "invert: the caption of the input image (default: the empty caption)")
      ->type_name("TEXT");
  app.add_option("--source-class", source_class,
                 "invert, class models: the class of the input image (default: the null class)")
      ->type_name("N");
  app.add_option("--out", f.out, "the edited image")->type_name("OUT.png")->required();
  return run_cli(app, argc, argv, [&] {
    check_png_out(f.out);
    if (strength <= 0)
      throw UsageError("--strength 0 would return the input: give a value in (0, 1]");
    if (method != "invert" && (!source_prompt.empty() || source_class >= 0))
      throw UsageError("--source-prompt / --source-class apply to --method invert only");
    Pipeline p = open_pipeline(f);
    GenerateRequest r = make_request(f, p, parse_conditions(f, p));
    r.sampling.strength = strength;
    r.batch = 1;
    Tensor in = load_input(image, p.image_size);
    const auto t0 = std::chrono::steady_clock::now();
    Tensor out;
    if (method == "sdedit") {
      out = edit_sdedit(p, in, r);
    } else {
      const auto& mc = p.model->config();
      dit::Condition src = p.model->null_condition(1);
      if (mc.kind == dit::CondKind::class_label) {
        if (!source_prompt.empty())
          throw UsageError("--source-prompt: the DiT is class-conditional; give --source-class");
        if (source_class >= mc.dit.num_classes)
          throw UsageError(fmt::format("--source-class {} is outside 0..{}", source_class,
                                       mc.dit.num_classes - 1));
        if (source_class >= 0) src.labels = {source_class};
      } else {
        if (source_class >= 0)
          throw UsageError("--source-class: the DiT is text-conditional; give --source-prompt");
        src.captions = {source_prompt};
      }
      out = edit_invert(p, in, src, r);
    }
    save_png(f.out, tensor_to_image(row(out, 0)));
    fmt::print("edited {} ({}, strength {}, {} {} steps, {}) -> {} in {:.1f} s\n", image, method,
               strength, dit::sampler_name(r.sampling.sampler), r.sampling.steps,
               guidance_text(r.guidance), f.out, seconds_since(t0));
    return 0;
  });
}

int cmd_inpaint(int argc, char** argv) {
  CLI::App app{
      "Regenerate the white part of --mask in --image following the prompt; the black part is "
      "kept exactly (grey above one half counts as white). The known latent region is re-noised "
      "to each step's level and blended in after every step.",
      "psvae inpaint"};
  InferenceFlags f;
  std::string image, mask_path;
  add_inference_flags(app, f, false);
  app.add_option("--image", image, "the image (PNG or JPEG)")->type_name("IN")->required();
  app.add_option("--mask", mask_path,
                 "mask image of the same size: white = regenerate, black = keep")
      ->type_name("M.png")
      ->required();
  app.add_option("--out", f.out, "the inpainted image")->type_name("OUT.png")->required();
  return run_cli(app, argc, argv, [&] {
    check_png_out(f.out);
    std::error_code ec;
    for (const std::string& path : {image, mask_path})
      if (!fs::exists(path, ec)) throw std::runtime_error(fmt::format("{}: no such file", path));
    Image src = load_image(image), m = load_image(mask_path);
    if (src.width != m.width || src.height != m.height)
      throw std::runtime_error(fmt::format("{}: the mask is {}x{} but the image {} is {}x{}",
                                           mask_path, m.width, m.height, image, src.width,
                                           src.height));
    Pipeline p = open_pipeline(f);
    GenerateRequest r = make_request(f, p, parse_conditions(f, p));
    r.batch = 1;
    const int S = p.image_size;
    Tensor in = image_to_tensor(resize_center_crop(src, S)).reshape({1, 3, S, S});
    // Keep = 1 where the mask is dark: grey = mean of RGB, regenerate when above one half.
    Image mm = resize_center_crop(m, S);
    Tensor keep = Tensor::empty({1, 1, S, S}, DType::F32);
    int64_t regenerate = 0;
    for (int64_t i = 0; i < static_cast<int64_t>(S) * S; ++i) {
      const uint8_t* px = &mm.rgb[static_cast<size_t>(i) * 3];
      const bool white = (px[0] + px[1] + px[2]) / 3.0 > 127.5;
      keep.data<float>()[i] = white ? 0.0f : 1.0f;
      regenerate += white;
    }
    if (regenerate == 0)
      fmt::print(stderr, "warning: {} has no white pixels: nothing is regenerated\n", mask_path);
    const auto t0 = std::chrono::steady_clock::now();
    Tensor out = inpaint(p, in, keep, r);
    save_png(f.out, tensor_to_image(row(out, 0)));
    fmt::print(
        "inpainted {} ({:.1f}% of the pixels regenerated, {} {} steps, {}) -> {} in {:.1f} "
        "s\n",
        image, 100.0 * static_cast<double>(regenerate) / (static_cast<double>(S) * S),
        dit::sampler_name(r.sampling.sampler), r.sampling.steps, guidance_text(r.guidance), f.out,
        seconds_since(t0));
    return 0;
  });
}

}  // namespace psvae::train
