"""Leakage metrics: reconstruction quality (MSE, PSNR, SSIM) and distance correlation.

PSNR and SSIM come from torchmetrics (a maintained implementation, Gaussian
window 11x11, sigma 1.5, K1 0.01, K2 0.03), not from code of our own. Distance
correlation is written here because NoPeek (defenses/nopeek.py) needs it
differentiable, as a training loss; the metric and the loss are one function,
so the defense minimises exactly what the table reports.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Which way each recorded metric points: for these a HIGHER value means LESS leakage (the
# reconstruction is worse); for every other metric (psnr, ssim, dcor, label_acc, row_acc,
# norm_auc) a higher value means more. The report's verdicts read it (analysis/phi_leakage.py).
LESS_LEAKAGE_WHEN_HIGHER = frozenset({"mse"})

SSIM_CHUNK = 128  # images a time (ssim): bounds its memory at about 0.5 GB for 28x28 images


def mse(x: Tensor, y: Tensor) -> float:
    """Mean squared error between two tensors of the same shape, in float64."""
    return float(torch.mean((x.double() - y.double()) ** 2))


def psnr(x: Tensor, y: Tensor) -> float:
    """PSNR in dB of images on [0, 1]; inf when they are equal."""
    if mse(x, y) == 0:
        return math.inf
    # Imported here: torchmetrics pulls in torchvision and torch._dynamo (about 160 MB), which the
    # settings module, imported by every actor and FL's driver, must not.
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(y.double(), x.double(), data_range=1.0))


def ssim(x: Tensor, y: Tensor) -> float:
    """Mean SSIM of two (n, C, H, W) batches of images on [0, 1] (H, W >= 11)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim wants two (n, C, H, W) tensors of equal shape, got {x.shape}, {y.shape}")
    from torchmetrics.functional.image import structural_similarity_index_measure  # see psnr

    # In chunks: torchmetrics convolves five stacked copies of the batch with an 11x11 window
    # through im2col, 121 float64 values a pixel (about 7 GB for 2000 28x28 images at once). Every
    # image has as many pixels, so the size-weighted mean of the chunks' means is the whole mean.
    total = 0.0
    for start in range(0, len(x), SSIM_CHUNK):
        a, b = x[start : start + SSIM_CHUNK].double(), y[start : start + SSIM_CHUNK].double()
        total += float(structural_similarity_index_measure(b, a, data_range=1.0)) * len(a)
    return total / len(x)


def _centred(z: Tensor) -> Tensor:
    d = torch.cdist(z, z)
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def distance_correlation_loss(x: Tensor, y: Tensor) -> Tensor:
    """Sample distance correlation (Szekely et al. 2007) of paired rows, as a differentiable
    scalar tensor in [0, 1] (rows flattened; V-statistic, so biased up in high dimension)."""
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of rows, got {len(x)} and {len(y)}")
    a, b = _centred(x.reshape(len(x), -1)), _centred(y.reshape(len(y), -1))
    dcov2, dvar = (a * b).mean(), (a * a).mean() * (b * b).mean()
    # The epsilon keeps the gradient finite where a batch has no spread (sqrt'(0) is infinite).
    return torch.sqrt(torch.clamp(dcov2, min=0.0) / torch.sqrt(dvar + 1e-12) + 1e-12)


def distance_correlation(x: Tensor, y: Tensor) -> float:
    """distance_correlation_loss in float64, as a number: the reported metric."""
    with torch.no_grad():
        return min(1.0, float(distance_correlation_loss(x.double(), y.double())))


def reconstruction_metrics(originals: Tensor, reconstructions: Tensor) -> dict[str, float]:
    """mse, psnr and ssim of reconstructions against originals, both images on [0, 1]."""
    return {
        "mse": mse(originals, reconstructions),
        "psnr": psnr(originals, reconstructions),
        "ssim": ssim(originals, reconstructions),
    }
