"""Golden file for train/eval/frechet.cpp: the Frechet distance of two random 8-D feature sets.

Computed in float64 with torch only (no numpy/scipy linear algebra), two ways that must agree:
  - pytorch-fid's formula with a general matrix square root: tr sqrtm(S1 S2) as the sum of the
    square roots of the eigenvalues of S1 S2 (torch.linalg.eigvals; they are real and >= 0 since
    S1 S2 is similar to the PSD S1^1/2 S2 S1^1/2), and
  - the symmetric form frechet.cpp uses: S1^1/2 from torch.linalg.eigh, then the eigenvalues of
    S1^1/2 S2 S1^1/2.
Statistics as numpy.cov (unbiased, n - 1). The features are correlated (a random mixing matrix)
so that the covariances are far from diagonal.

Writes tests/reference/golden/frechet_8d.safetensors: f1 (60, 8), f2 (45, 8) f64, mu1, mu2 (8),
sigma1, sigma2 (8, 8), fd (1), fd_eigvals (1) (the general-sqrtm value, for the record).
Run: /usr/bin/python3 tests/reference/frechet_golden.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402


def stats(f):
    mu = f.mean(0)
    x = f - mu
    return mu, x.T @ x / (f.shape[0] - 1)


def fd_symmetric(mu1, s1, mu2, s2):
    l, v = torch.linalg.eigh(s1)
    root1 = v @ torch.diag(l.clamp(min=0).sqrt()) @ v.T
    m = root1 @ s2 @ root1
    m = 0.5 * (m + m.T)
    tr_covmean = torch.linalg.eigvalsh(m).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean


def fd_general(mu1, s1, mu2, s2):
    ev = torch.linalg.eigvals(s1 @ s2)
    assert ev.imag.abs().max() < 1e-9 * ev.real.abs().max(), ev
    tr_covmean = ev.real.clamp(min=0).sqrt().sum()
    return ((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean


def main():
    torch.manual_seed(8)
    d = 8
    a1 = torch.randn(d, d, dtype=torch.float64)
    a2 = a1 + 0.5 * torch.randn(d, d, dtype=torch.float64)
    f1 = torch.randn(60, d, dtype=torch.float64) @ a1 + 0.3
    f2 = torch.randn(45, d, dtype=torch.float64) @ a2 - 0.2
    mu1, s1 = stats(f1)
    mu2, s2 = stats(f2)
    fd = fd_symmetric(mu1, s1, mu2, s2)
    fd_g = fd_general(mu1, s1, mu2, s2)
    assert abs(fd - fd_g) < 1e-9 * abs(fd), (fd, fd_g)
    out = {
        "f1": f1,
        "f2": f2,
        "mu1": mu1,
        "mu2": mu2,
        "sigma1": s1,
        "sigma2": s2,
        "fd": fd.reshape(1),
        "fd_eigvals": fd_g.reshape(1),
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "frechet_8d.safetensors")
    safetensors_io.save(path, out, {"seed": "8"})
    print("fd", fd.item(), "general sqrtm", fd_g.item())


if __name__ == "__main__":
    main()
