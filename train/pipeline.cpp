// Inference with the trained stack (see pipeline.h).
//
// Random streams. Every number comes from Philox with the request's seed, at counter offsets laid
// out so that image i's numbers depend on (seed, i) alone and not on the batch it shares
// (tensor/random.h: element e of a fill at offset o uses counter o + e / 4). With
// per = philox_counters(L*h*w), the counters of one latent:
//   lane 0      [i * per, (i + 1) * per)                 image i's starting noise x_T (generate,
//                                                        inpaint) or its SDEdit noise (edit)
//   lane t + 1  (t + 1) * 2^40 + [i * per, (i + 1) * per)  the sampler's draw at step t (DDPM's
//                                                        ancestral noise, DDIM's with eta > 0)
// A batch of images i0..i0+m-1 draws one fill of m latents per step at (t + 1) * 2^40 + i0 * per,
// which is exactly the union of its images' lanes when L*h*w is a multiple of 4 (otherwise a fill
// would split a Philox block between two images, so stochastic samplers then run one image per
// batch). The offset is set before sampling and moved to the next lane after every step through
// SampleOptions::after_step. 2^40 counters per lane hold 2^40 / per images (a million of
// 96x16x16 latents).
#include "train/pipeline.h"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "autograd/autocast.h"
#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "train/tasks/dit_task.h"
#include "train/tasks/model_keys.h"
#include "train/tasks/psvae_task.h"
#include "train/tasks/svae_task.h"

namespace psvae::train {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kLane = uint64_t{1} << 40;

std::string meta_value(const safetensors::Metadata& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? "" : it->second;
}

bool same_values(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) return false;
  std::vector<float> u = ops::cast(a.to(Device::cpu()), DType::F32).to_vector<float>();
  std::vector<float> v = ops::cast(b.to(Device::cpu()), DType::F32).to_vector<float>();
  return u == v;
}

// The PS-VAE of stage 2 as train-psvae built it: its architecture from its saved config.
std::shared_ptr<PSVAE> build_psvae(const StageCheckpoint& ck, int64_t* image_size) {
  Config pc(psvae_stage_schema());
  inherit_arch_keys(pc, ck, {"model.", "data.image_size"});
  const PSVAEConfig c = psvae_config(pc);
  *image_size = pc.get_int("data.image_size");
  if (*image_size % c.encoder.patch != 0)
    throw std::runtime_error(
        fmt::format("{}: image size {} is not a multiple of the encoder patch {}", ck.path,
                    *image_size, c.encoder.patch));
  Generator g(0);  // every weight is loaded below
  auto m = std::make_shared<PSVAE>(c, g);
  try {
    m->load_state_dict(ck.model);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", ck.path, e.what()));
  }
  return m;
}

// The PS-VAE file of a DiT run: the override, else the file the run used (task.psvae_checkpoint),
// else its init.from (a run folder is resolved to its newest checkpoint).
std::string psvae_source(const StageCheckpoint& dit, const Config& dc, const std::string& over) {
  if (!over.empty()) return over;
  std::error_code ec;
  const std::string used = meta_value(dit.meta, "task.psvae_checkpoint");
  if (!used.empty() && fs::exists(used, ec)) return used;
  const std::string from = dc.get_string("init.from");
  if (!from.empty() && fs::exists(from, ec)) return from;
  throw std::runtime_error(fmt::format(
      "{}: its PS-VAE ({}) is not there any more; pass the train-psvae checkpoint with --psvae",
      dit.path, used.empty() ? from : used));
}

dit::Condition slice_condition(const dit::Condition& c, int64_t i0, int64_t m) {
  dit::Condition s;
  if (!c.labels.empty())
    s.labels.assign(c.labels.begin() + i0, c.labels.begin() + i0 + m);
  else
    s.captions.assign(c.captions.begin() + i0, c.captions.begin() + i0 + m);
  return s;
}

int64_t latent_numel(const Pipeline& p) { return p.latent_shape.numel(); }

// Lane-0 noise of images i0..i0+m-1: (m, L, h, w) f32 on the pipeline's device.
Tensor image_noise(const Pipeline& p, uint64_t seed, int64_t i0, int64_t m) {
  const uint64_t per = philox_counters(latent_numel(p));
  std::vector<Tensor> parts;
  for (int64_t i = i0; i < i0 + m; ++i) {
    Generator g(seed, static_cast<uint64_t>(i) * per);
    parts.push_back(
        dit::initial_noise(Shape{1, p.latent_shape[0], p.latent_shape[1], p.latent_shape[2]},
                           DType::F32, p.device, g));
  }
  return parts.size() == 1 ? parts.front() : ops::concat(parts, 0);
}

bool stochastic(const dit::SampleOptions& o) {
  return o.sampler == dit::SamplerKind::ddpm || (o.sampler == dit::SamplerKind::ddim && o.eta > 0);
}

Tensor to_images(const Pipeline& p, const Tensor& latents) {
  return ops::clamp(p.decode(latents), -1.0, 1.0).to(Device::cpu());
}

// Runs body(i0, m, opt, gen) over the batches of n images and concatenates the (m,3,H,W) images it
// returns. opt is `base` with after_step extended to move gen to the next step's lane.
using BatchBody =
    std::function<Tensor(int64_t i0, int64_t m, const dit::SampleOptions& opt, Generator& gen)>;
Tensor run_batches(const Pipeline& p, const GenerateRequest& r, const dit::SampleOptions& base,
                   int64_t n, const BatchBody& body) {
  if (n < 1) throw std::invalid_argument("nothing to generate: no conditions");
  if (r.batch < 1) throw std::invalid_argument(fmt::format("batch {} < 1", r.batch));
  dit::check_options(p.setup, base);
  const uint64_t per = philox_counters(latent_numel(p));
  const int64_t batch = stochastic(base) && latent_numel(p) % 4 != 0 ? 1 : r.batch;
  std::vector<Tensor> out;
  for (int64_t i0 = 0; i0 < n; i0 += batch) {
    const int64_t m = std::min(batch, n - i0);
    const uint64_t first = static_cast<uint64_t>(i0) * per;
    Generator gen(r.seed, kLane + first);
    uint64_t step = 0;
    dit::SampleOptions opt = base;
    opt.after_step = [&gen, &step, first, user = base.after_step](const Tensor& x, double t) {
      gen.set_state(gen.seed(), (++step + 1) * kLane + first);
      return user ? user(x, t) : x;
    };
    out.push_back(body(i0, m, opt, gen));
  }
  return out.size() == 1 ? out.front() : ops::concat(out, 0);
}

void check_images(const Pipeline& p, const Tensor& images, int64_t n_cond, const char* who) {
  if (images.rank() != 4 || images.size(1) != 3 || images.size(2) != p.image_size ||
      images.size(3) != p.image_size)
    throw std::invalid_argument(fmt::format("{}: expected images (N,3,{},{}), got {}", who,
                                            p.image_size, p.image_size, images.str()));
  if (n_cond != images.size(0))
    throw std::invalid_argument(
        fmt::format("{}: {} conditions for {} images", who, n_cond, images.size(0)));
}

}  // namespace

Pipeline Pipeline::load(const std::string& dit_checkpoint, const std::string& psvae_override,
                        Device device) {
  Pipeline p;
  p.device = device;
  StageCheckpoint dk = read_stage_checkpoint_file(dit_checkpoint);
  if (dk.task_name != "dit")
    throw std::runtime_error(
        fmt::format("{}: a checkpoint of task '{}', expected a train-dit checkpoint or run folder",
                    dk.path, dk.task_name.empty() ? "?" : dk.task_name));
  p.dit_path = dk.path;
  p.dit_config = Config(dit_stage_schema());
  inherit_arch_keys(p.dit_config, dk, {""});  // every key of the run's saved config

  const std::string psrc = psvae_source(dk, p.dit_config, psvae_override);
  StageCheckpoint pk = read_stage_checkpoint_file(psrc);
  if (pk.task_name != "psvae")
    throw std::runtime_error(fmt::format(
        "{}: a checkpoint of task '{}', expected a train-psvae checkpoint (the DiT's PS-VAE)",
        pk.path, pk.task_name.empty() ? "?" : pk.task_name));
  p.psvae_path = pk.path;
  int64_t image_size = 0;
  p.psvae = build_psvae(pk, &image_size);
  p.image_size = static_cast<int>(image_size);
  const auto& pc = p.psvae->config();
  const int64_t grid = image_size / pc.encoder.patch;
  p.latent_shape = Shape{pc.svae.latent_dim, grid, grid};
  const std::string trained_on = meta_value(dk.meta, "task.latent_shape");
  if (!trained_on.empty() && trained_on != p.latent_shape.str())
    throw std::runtime_error(
        fmt::format("{}: its latents are {} but the DiT {} was trained on {}: not the DiT's PS-VAE",
                    pk.path, p.latent_shape.str(), dk.path, trained_on));

  // The statistics the DiT was trained with define its latent space.
  p.stats = latent_stats_from(dk.task, pc.svae.latent_dim, dk.path);
  for (const auto& [n, t] : pk.task)
    if ((n == "latent_mean" && !same_values(t, p.stats.mean)) ||
        (n == "latent_std" && !same_values(t, p.stats.std)))
      std::fprintf(stderr,
                   "warning: %s has other latent statistics than the DiT %s was trained with; "
                   "using the DiT's\n",
                   pk.path.c_str(), dk.path.c_str());

  p.setup = diffusion_setup(p.dit_config, p.latent_shape);
  dit::ConditionalDiTConfig mc = conditional_dit_config(p.dit_config, p.latent_shape);
  dit::WordTokenizer tok;
  std::shared_ptr<const dit::ExternalEmbeddings> ext;
  if (mc.kind == dit::CondKind::text) {
    const std::string json = meta_value(dk.meta, "task.tokenizer");
    if (json.empty())
      throw std::runtime_error(fmt::format(
          "{}: a text-conditioned DiT without its tokenizer (task.tokenizer)", dk.path));
    tok = dit::WordTokenizer::from_json(json);
  } else if (mc.kind == dit::CondKind::external) {
    const std::string path = p.dit_config.get_string("data.embeddings");
    std::error_code ec;
    if (path.empty() || !fs::exists(path, ec))
      throw std::runtime_error(fmt::format(
          "{}: data.embeddings = '{}' (the caption embeddings this DiT reads) is not there",
          dk.path, path));
    ext = std::make_shared<const dit::ExternalEmbeddings>(dit::ExternalEmbeddings::load(path));
  }
  Generator g(0);
  p.model = std::make_shared<dit::ConditionalDiT>(mc, g, tok, ext);
  try {
    p.model->load_state_dict(dk.model);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", dk.path, e.what()));
  }
  p.psvae->set_requires_grad(false);
  p.model->set_requires_grad(false);
  p.psvae->eval();
  p.model->eval();
  p.psvae->to(device);
  p.model->to(device);
  return p;
}

dit::Denoiser make_denoiser(const Pipeline& p, const dit::Condition& cond,
                            const std::string& negative_prompt, const dit::GuidanceConfig& g) {
  const dit::ConditionalDiT& model = *p.model;
  const bool text = model.config().kind != dit::CondKind::class_label;
  if (!negative_prompt.empty() && !text)
    throw std::invalid_argument(
        "a negative prompt needs a text-conditioned DiT; this one is class-conditional");
  const int64_t n = cond.size(), C = p.latent_shape[0];
  auto branch = [&p, C](const dit::Condition& c) -> dit::Denoiser {
    dit::DiTCond k;
    {
      ag::NoGradGuard no_grad;
      k = p.model->encode(c, p.device);
    }
    return [&p, C, k](const Tensor& x, const Tensor& t) {
      ag::NoGradGuard no_grad;
      ag::AutocastGuard autocast(p.compute);
      p.evaluations += x.size(0);
      Tensor out = ops::cast(p.model->forward(ag::Var(x), dit::model_time(p.setup, t), k).data(),
                             DType::F32);
      return out.size(1) == C ? out : ops::narrow(out, 1, 0, C);  // learn_sigma: [eps, var]
    };
  };
  dit::Denoiser c = branch(cond);
  if (g.scale == 1.0) return c;  // the unconditional model is never run
  dit::Condition u = model.null_condition(n);
  if (!negative_prompt.empty()) u.captions.assign(static_cast<size_t>(n), negative_prompt);
  dit::GuidanceConfig gc = g;
  gc.time_scale = p.setup.objective == dit::Objective::flow ? 1.0 : p.setup.num_train_steps;
  return dit::classifier_free_guidance(c, branch(u), gc);
}

Tensor generate(const Pipeline& p, const GenerateRequest& r) {
  dit::SampleOptions base = r.sampling;
  base.strength = 1.0;
  base.x_noised = false;
  return run_batches(
      p, r, base, r.cond.size(),
      [&](int64_t i0, int64_t m, const dit::SampleOptions& opt, Generator& gen) {
        dit::Denoiser d =
            make_denoiser(p, slice_condition(r.cond, i0, m), r.negative_prompt, r.guidance);
        return to_images(p, dit::sample(d, p.setup, opt, image_noise(p, r.seed, i0, m), gen));
      });
}

Tensor edit_sdedit(const Pipeline& p, const Tensor& images, const GenerateRequest& r) {
  check_images(p, images, r.cond.size(), "edit");
  dit::SampleOptions base = r.sampling;
  base.x_noised = true;  // noised here, with each image's own noise
  return run_batches(p, r, base, images.size(0),
                     [&](int64_t i0, int64_t m, const dit::SampleOptions& opt, Generator& gen) {
                       Tensor x0 = p.encode(images.slice0(i0, i0 + m));
                       const double t = static_cast<double>(dit::steps_to_run(opt)) / opt.steps;
                       Tensor start =
                           dit::noise_to(p.setup, opt, x0, t, image_noise(p, r.seed, i0, m));
                       dit::Denoiser d = make_denoiser(p, slice_condition(r.cond, i0, m),
                                                       r.negative_prompt, r.guidance);
                       return to_images(p, dit::sample(d, p.setup, opt, start, gen));
                     });
}

Tensor edit_invert(const Pipeline& p, const Tensor& images, const dit::Condition& source_cond,
                   const GenerateRequest& r) {
  check_images(p, images, r.cond.size(), "edit");
  check_images(p, images, source_cond.size(), "edit (source prompt)");
  if (stochastic(r.sampling))
    throw std::invalid_argument(fmt::format(
        "inversion needs a deterministic sampler (ddim with eta 0, dpmpp-2m, euler or heun), got "
        "{}{}",
        dit::sampler_name(r.sampling.sampler),
        r.sampling.sampler == dit::SamplerKind::ddim ? fmt::format(" with eta {}", r.sampling.eta)
                                                     : ""));
  dit::SampleOptions base = r.sampling;
  base.x_noised = true;
  return run_batches(p, r, base, images.size(0),
                     [&](int64_t i0, int64_t m, const dit::SampleOptions& opt, Generator& gen) {
                       Tensor x0 = p.encode(images.slice0(i0, i0 + m));
                       dit::Denoiser src =
                           make_denoiser(p, slice_condition(source_cond, i0, m), "", {});
                       Tensor xt = dit::invert(src, p.setup, opt, x0);
                       dit::Denoiser d = make_denoiser(p, slice_condition(r.cond, i0, m),
                                                       r.negative_prompt, r.guidance);
                       return to_images(p, dit::sample(d, p.setup, opt, xt, gen));
                     });
}

Tensor inpaint(const Pipeline& p, const Tensor& images, const Tensor& mask,
               const GenerateRequest& r) {
  check_images(p, images, r.cond.size(), "inpaint");
  const int64_t n = images.size(0), H = images.size(2), h = p.latent_shape[1];
  if (mask.rank() != 4 || mask.size(1) != 1 || mask.size(2) != H || mask.size(3) != H ||
      (mask.size(0) != n && mask.size(0) != 1))
    throw std::invalid_argument(
        fmt::format("inpaint: expected a mask (N,1,{},{}) for images {}, got {}", H, H,
                    images.str(), mask.str()));
  if (H % h != 0)
    throw std::invalid_argument(
        fmt::format("inpaint: image size {} is not a multiple of the latent grid {}", H, h));
  const Tensor keep = ops::cast(mask, DType::F32).to(Device::cpu());
  // Min-pooling over each latent cell's pixel block: -maxpool(-mask). A cell is kept only when
  // all of its pixels are; a partly masked cell is regenerated (the kept pixels are pasted back).
  ops::Pool2dParams pool;
  pool.kh = pool.kw = pool.stride_h = pool.stride_w = static_cast<int>(H / h);
  const Tensor latent_keep =
      ops::mul_scalar(ops::max_pool2d(ops::mul_scalar(keep, -1.0), pool).first, -1.0);
  dit::SampleOptions base = r.sampling;
  Tensor out = run_batches(
      p, r, base, n, [&](int64_t i0, int64_t m, const dit::SampleOptions& opt, Generator& gen) {
        Tensor x0 = p.encode(images.slice0(i0, i0 + m));
        Tensor lm =
            (latent_keep.size(0) == 1 ? latent_keep : latent_keep.slice0(i0, i0 + m)).to(p.device);
        dit::Denoiser d =
            make_denoiser(p, slice_condition(r.cond, i0, m), r.negative_prompt, r.guidance);
        return to_images(p,
                         dit::inpaint(d, p.setup, opt, image_noise(p, r.seed, i0, m), x0, lm, gen));
      });
  // The kept pixels exactly: mask * image + (1 - mask) * generated.
  const Tensor img = ops::cast(images, DType::F32).to(Device::cpu());
  const Tensor free = ops::add_scalar(ops::mul_scalar(keep, -1.0), 1.0);
  return ops::add(ops::mul(keep, img), ops::mul(free, out));
}

}  // namespace psvae::train
