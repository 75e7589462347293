"""Golden file for learn_sigma's hybrid loss (train/tasks/dit_task.h hybrid_vb_term): the
variational-bound term "vb" of openai/improved-diffusion / guided-diffusion's training_losses
(LossType.MSE, ModelVarType.LEARNED_RANGE, ModelMeanType.EPSILON), which facebookresearch/DiT
trains with. The functions below are upstream's math (gaussian_diffusion.py, losses.py) in float64:
  q_posterior_mean_variance, p_mean_variance (learned range, eps -> x0, no clipping),
  normal_kl, discretized_gaussian_log_likelihood, _vb_terms_bpd with the mean stopped
  (frozen_out = cat([model_output.detach(), model_var_values])).
Writes tests/reference/golden/dit_hybrid_vb.safetensors: inputs x0, x_t (float32, the values the
C++ side reads), t, eps_pred, var_values; outputs vb (the batch mean) and grad (d vb / d var_values).
Run: /usr/bin/python3 tests/reference/dit_hybrid_golden.py
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")

T = 1000
betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
alphas = 1.0 - betas
alphas_cumprod = np.cumprod(alphas, axis=0)
alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
sqrt_recip_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod)
sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod - 1)
posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)


def _extract(arr, t, shape):
    res = torch.from_numpy(arr)[t].double()
    while len(res.shape) < len(shape):
        res = res[..., None]
    return res.expand(shape)


def q_posterior_mean(x_start, x_t, t):
    return (_extract(posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract(posterior_mean_coef2, t, x_t.shape) * x_t)


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
    cdf_plus = approx_standard_normal_cdf(plus_in)
    min_in = inv_stdv * (centered_x - 1.0 / 255.0)
    cdf_min = approx_standard_normal_cdf(min_in)
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min,
                                   torch.log(cdf_delta.clamp(min=1e-12))))


def mean_flat(x):
    return x.mean(dim=list(range(1, len(x.shape))))


def vb_terms_bpd(model_output, x_start, x_t, t):
    model_eps, model_var_values = torch.split(model_output, x_t.shape[1], dim=1)
    min_log = _extract(posterior_log_variance_clipped, t, x_t.shape)
    max_log = _extract(np.log(betas), t, x_t.shape)
    frac = (model_var_values + 1) / 2
    model_log_variance = frac * max_log + (1 - frac) * min_log
    pred_xstart = (_extract(sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                   - _extract(sqrt_recipm1_alphas_cumprod, t, x_t.shape) * model_eps)
    model_mean = q_posterior_mean(pred_xstart, x_t, t)
    true_mean = q_posterior_mean(x_start, x_t, t)
    true_log_variance_clipped = _extract(posterior_log_variance_clipped, t, x_t.shape)
    kl = normal_kl(true_mean, true_log_variance_clipped, model_mean, model_log_variance)
    kl = mean_flat(kl) / np.log(2.0)
    decoder_nll = -discretized_gaussian_log_likelihood(
        x_start, means=model_mean, log_scales=0.5 * model_log_variance)
    decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
    return torch.where((t == 0), decoder_nll, kl)


def main():
    torch.manual_seed(0)
    n, c, h, w = 4, 2, 3, 3
    t = torch.tensor([0, 1, 500, 999], dtype=torch.int64)
    # x0 in [-1.2, 1.2]: some entries beyond +-0.999 take the decoder's edge bins at t = 0.
    x0 = ((torch.rand(n, c, h, w) * 2 - 1) * 1.2).float()
    noise = torch.randn(n, c, h, w).float()
    ab = torch.from_numpy(alphas_cumprod)[t].view(n, 1, 1, 1)
    x_t = (ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()).float()
    eps_pred = (noise + 0.3 * torch.randn(n, c, h, w)).float()
    var_values = (torch.rand(n, c, h, w) * 2 - 1).float()

    v = var_values.double().clone().requires_grad_(True)
    frozen_out = torch.cat([eps_pred.double().detach(), v], dim=1)
    vb = vb_terms_bpd(frozen_out, x0.double(), x_t.double(), t).mean()
    vb.backward()
    os.makedirs(OUT, exist_ok=True)
    safetensors_io.save(os.path.join(OUT, "dit_hybrid_vb.safetensors"), {
        "x0": x0, "x_t": x_t, "t": t, "eps_pred": eps_pred, "var_values": var_values,
        "vb": vb.detach().reshape(1), "grad": v.grad.detach(),
    })
    print("vb", vb.item())


if __name__ == "__main__":
    main()
