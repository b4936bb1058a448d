"""Information leakage from smashed data (SPEC): a decoder (model inversion) attack.

The threat model is an honest-but-curious server. It follows the protocol, but
it may also query one client's frozen bottom model with auxiliary images it
owns (never the clients' data), train a decoder that maps smashed data back to
images, and then run that decoder on the smashed data of the client's test
images. How well the images come back (MSE, PSNR, SSIM) and how strongly the
smashed data depends on the input (distance correlation) measure the leakage.

Plain torch, no Ray: the driver calls `measure_leakage` once per attacked client.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sglr_ray.atomic import atomic_path
from sglr_ray.data import FASHION, InputCodec
from sglr_ray.nodes.models import seeded
from sglr_ray.privacy.decoder import build_decoder  # one decoder for both attacks

IMAGE_SIZE = 28  # what a Fashion-MNIST client holds; models see it zero-padded to 32x32

_CHUNK = 256  # inference batch size: bounds memory without slowing anything down

# --- metrics -----------------------------------------------------------------------
# All metrics compute in float64: they are reported to several digits and the
# SSIM/distance-correlation formulas subtract nearly equal quantities.


def mse(x: Tensor, y: Tensor) -> float:
    """Mean squared error between two tensors of the same shape."""
    return float(torch.mean((x.double() - y.double()) ** 2))


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, 10*log10(data_range^2 / mse); inf when x == y."""
    err = mse(x, y)
    return math.inf if err == 0 else 10.0 * math.log10(data_range**2 / err)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian (size,), float64; the 2-D window is its outer product."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004) over a batch of (n, C, H, W) images; H, W >= 11.

    Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid'
    convolution (no padding, so border pixels are not compared with zeros).
    The SSIM map is averaged per image and then over the batch (all images have
    the same size, so this is the mean of all map values).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim wants two (n, C, H, W) tensors of equal shape, got {x.shape}, {y.shape}")
    x, y = x.double(), y.double()
    channels = x.shape[1]
    # The 11x11 Gaussian window is separable: a row pass then a column pass gives
    # the same 'valid' result as one 2-D convolution at a fraction of the cost.
    # groups=C: one window per channel, so channels are compared independently.
    g = _gaussian_1d()
    rows = g.view(1, 1, 1, 11).expand(channels, 1, 1, 11).contiguous()
    cols = g.view(1, 1, 11, 1).expand(channels, 1, 11, 1).contiguous()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())


def _double_centred_distances(z: Tensor) -> Tensor:
    d = torch.cdist(z, z)
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def distance_correlation(x: Tensor, y: Tensor) -> float:
    """Sample distance correlation (Szekely et al. 2007) of paired samples x (n, ...) and y (n, ...).

    Rows are flattened; Euclidean distance matrices are double-centred. Returns
    a value in [0, 1]: 0 for (empirically) independent samples and when either
    sample has zero distance variance, 1 when y is a similarity transform of x.
    Memory is O(n^2): pass a few hundred rows, not thousands.

    This is the plain (V-statistic) estimator, biased upwards in high dimension:
    independent 1000-d Gaussians score about 0.94 at n = 500, and random 32x16x16
    noise against 500 Fashion-MNIST inputs about 0.47. Compare values between
    configurations at the same n and shapes, not against 0.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of rows, got {len(x)} and {len(y)}")
    a = _double_centred_distances(x.reshape(len(x), -1).double())
    b = _double_centred_distances(y.reshape(len(y), -1).double())
    dcov2, dvar_x2, dvar_y2 = (a * b).mean(), (a * a).mean(), (b * b).mean()
    denom = torch.sqrt(dvar_x2 * dvar_y2)
    if denom <= 0:
        return 0.0
    # Clamp: rounding can push dcov2 a hair below 0 or the ratio a hair above 1.
    return float(torch.sqrt(torch.clamp(dcov2 / denom, 0.0, 1.0)))


# --- the attack --------------------------------------------------------------------


def to_unit_range(x_model_input: Tensor, codec: InputCodec = FASHION) -> Tensor:
    """Undo the dataset's normalisation: model inputs -> [0, 1] (InputCodec.to_unit_range)."""
    return codec.to_unit_range(x_model_input)


@torch.no_grad()
def _apply(module: nn.Module, inputs: Tensor) -> Tensor:
    """Run a module in eval mode over `inputs` in chunks; restores the module's previous mode."""
    was_training = module.training
    module.eval()  # BatchNorm must use its running statistics, as the client's model would
    try:
        return torch.cat([module(inputs[i : i + _CHUNK]) for i in range(0, len(inputs), _CHUNK)])
    finally:
        module.train(was_training)


def train_decoder(
    bottom: nn.Module,
    aux_inputs: Tensor,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    codec: InputCodec = FASHION,
) -> nn.Module:
    """Train a decoder against a frozen bottom model with the server's auxiliary images.

    aux_inputs: normalised model inputs (n, *input_shape). The bottom model is only
    queried (eval mode, no gradients) and is left unchanged. Targets are the
    aux images on [0, 1]; loss is MSE; optimiser Adam. Deterministic in `seed`
    and leaves the global torch RNG untouched. Returns the decoder in eval mode.
    """
    # The bottom is frozen, so its outputs never change: smash the aux set once
    # instead of once per epoch.
    smashed = _apply(bottom, aux_inputs)
    targets = to_unit_range(aux_inputs, codec)
    shapes = (tuple(smashed.shape[1:]), tuple(aux_inputs.shape[1:]))
    decoder = seeded(lambda: build_decoder(*shapes), seed)  # own RNG stream: the global one stays
    optimiser = torch.optim.Adam(decoder.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    decoder.train()
    for _ in range(epochs):
        order = torch.randperm(len(aux_inputs), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.mse_loss(decoder(smashed[idx]), targets[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return decoder.eval()


@dataclass
class LeakageResult:
    """Leakage measured against one client: reconstruction quality and dependence."""

    client_id: int
    samples: int  # target images reconstructed
    mse: float
    psnr: float
    ssim: float
    distance_correlation: float  # between target inputs and their smashed data

    def as_row(self) -> dict:
        return asdict(self)


def crop_to_client_image(images: Tensor, codec: InputCodec = FASHION) -> Tensor:
    """Model-sized images -> what the client holds (Fashion-MNIST: the 28x28 inside the padding)."""
    return codec.client_view(images)


def measure_leakage(
    bottom: nn.Module,
    aux_inputs: Tensor,
    target_inputs: Tensor,
    client_id: int,
    epochs: int = 5,
    seed: int = 0,
    dcor_samples: int = 500,
    codec: InputCodec = FASHION,
) -> tuple[LeakageResult, Tensor, Tensor]:
    """Attack one client's bottom model and measure how much its smashed data leaks.

    aux_inputs: the server's own normalised images (n_aux, 1, 32, 32), used to
    train the decoder. target_inputs: the client's normalised test images
    (n, 1, 32, 32), seen by the server only as smashed data. MSE, PSNR and SSIM
    compare the [0, 1] targets with their reconstructions on the 28x28 image a client
    holds (the padding cropped off); distance correlation
    is computed on the first `dcor_samples` targets (it needs O(n^2) memory).
    Returns (result, originals on [0, 1], reconstructions on [0, 1]).
    """
    decoder = train_decoder(bottom, aux_inputs, epochs=epochs, seed=seed, codec=codec)
    smashed = _apply(bottom, target_inputs)
    # Scored on the 28x28 image the client holds: the 2-pixel padding is not the client's
    # data, and a decoder reproduces its constant value easily, which would flatter it.
    reconstructions = crop_to_client_image(_apply(decoder, smashed), codec)
    originals = crop_to_client_image(to_unit_range(target_inputs, codec), codec)
    images = originals.dim() == 4 and min(originals.shape[-2:]) >= 11  # SSIM's 11x11 window fits
    k = min(dcor_samples, len(target_inputs))
    result = LeakageResult(
        client_id=client_id,
        samples=len(target_inputs),
        mse=mse(originals, reconstructions),
        psnr=psnr(originals, reconstructions),
        ssim=ssim(originals, reconstructions) if images else math.nan,
        # Normalisation is affine, and distance correlation is invariant to it.
        distance_correlation=distance_correlation(target_inputs[:k], smashed[:k]),
    )
    return result, originals, reconstructions


def grid_png(originals: Tensor, reconstructions: Tensor, count: int = 8) -> bytes:
    """A PNG: the first `count` originals in the top row, their reconstructions below.
    Both inputs are [0, 1] images (n, 1, H, W)."""
    from torchvision.utils import save_image  # torchvision is only needed here

    count = min(count, len(originals), len(reconstructions))
    grid = torch.cat([originals[:count], reconstructions[:count]]).detach().cpu()
    if grid.dim() != 4:  # not images (a tabular input): each sample as one row of pixels
        grid = grid.reshape(len(grid), 1, 1, -1)
    buffer = io.BytesIO()
    save_image(grid, buffer, nrow=count, format="png")
    return buffer.getvalue()


def save_grid(originals: Tensor, reconstructions: Tensor, path: str | Path, count: int = 8) -> None:
    """Write `grid_png` to `path`, through a temporary name in the same directory and a
    rename, so readers never see a half-written file."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(grid_png(originals, reconstructions, count))
