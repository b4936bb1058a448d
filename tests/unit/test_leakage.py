"""Leakage metrics and the decoder attack (sglr_ray/leakage.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sglr_ray.data import DatasetInfo, make_synthetic, to_model_input
from sglr_ray.measure import leakage
from sglr_ray.measure.leakage import distance_correlation, mse, psnr, ssim

# --- metrics against hand-computed values --------------------------------------------


def test_mse_and_psnr_by_hand():
    x, y = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    assert mse(x, y) == pytest.approx(0.25)
    assert psnr(x, y) == pytest.approx(10 * math.log10(1 / 0.25))  # 6.0206 dB
    assert psnr(x, y) == pytest.approx(6.0206, abs=1e-4)
    assert psnr(x, y, data_range=255.0) == pytest.approx(10 * math.log10(255**2 / 0.25))
    # Two of four entries off by 1 and 3: mse = (1 + 9) / 4.
    a, b = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 2.0, 0.0])
    assert mse(a, b) == pytest.approx(2.5)
    assert psnr(a, b, data_range=5.0) == pytest.approx(10 * math.log10(25 / 2.5))  # 10 dB
    assert psnr(x, x) == math.inf


def _numpy_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Reference SSIM of two 2-D images on [0, 1]: explicit loop over every 11x11 'valid' window."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_identity_and_against_numpy_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=gen)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)

    shifted = (x + 0.2).clamp(0, 1)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    for other in (shifted, noisy):
        value = ssim(x, other)
        assert value < 0.99
        expected = np.mean([_numpy_ssim(x[i, 0].numpy(), other[i, 0].numpy()) for i in range(3)])
        assert value == pytest.approx(expected, abs=1e-9)
    assert ssim(x, noisy) < ssim(x, (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1))
    with pytest.raises(ValueError):
        ssim(x[:, 0], x[:, 0])  # 3-D input


def _numpy_dcor(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: Szekely et al.'s V-statistic form dCov^2 = S1 + S2 - 2 S3, no centred matrices."""

    def dcov2(a: np.ndarray, b: np.ndarray) -> float:
        s1 = (a * b).mean()
        s2 = a.mean() * b.mean()
        s3 = (a.mean(axis=1) * b.mean(axis=1)).mean()
        return s1 + s2 - 2 * s3

    a = np.linalg.norm(x[:, None] - x[None, :], axis=-1)
    b = np.linalg.norm(y[:, None] - y[None, :], axis=-1)
    return math.sqrt(dcov2(a, b) / math.sqrt(dcov2(a, a) * dcov2(b, b)))


def test_distance_correlation_properties_and_reference():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=gen)
    assert distance_correlation(x, x) == pytest.approx(1.0, abs=1e-9)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen))  # rotation, then scale and shift
    assert distance_correlation(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-9)
    assert distance_correlation(x, x**2) < 0.9  # dependent but not a similarity transform

    # Low-dimensional on purpose: the sample statistic is biased upwards with dimension
    # (independent 1000-d samples at n=500 score about 0.94).
    a, b = torch.randn(500, 2, generator=gen), torch.randn(500, 2, generator=gen)
    assert distance_correlation(a, b) < 0.15

    # Rows are flattened: image-shaped inputs work; constant input has no distance variance.
    assert distance_correlation(torch.ones(10, 1, 4, 4), torch.randn(10, 3, generator=gen)) == 0.0

    small_x = np.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5], [3.0, 2.0], [-1.0, 0.0]])
    small_y = np.array([[1.0], [0.0], [2.0], [5.0], [-2.0]])
    expected = _numpy_dcor(small_x, small_y)
    assert 0.0 < expected < 1.0
    assert distance_correlation(torch.tensor(small_x), torch.tensor(small_y)) == pytest.approx(expected)


def test_to_unit_range_inverts_model_input():
    images = np.array([[[0, 128, 255] * 9 + [7]] * 28], dtype=np.uint8)  # (1, 28, 28)
    unit = leakage.to_unit_range(to_model_input(images))
    assert unit.shape == (1, 1, 32, 32)
    assert torch.allclose(unit[0, 0, 2:30, 2:30], torch.as_tensor(images[0]).float() / 255, atol=1e-6)
    assert unit[0, 0, :2].abs().max() < 1e-6  # the padding is black (up to float32 rounding)


# --- the decoder attack ------------------------------------------------------------


class IdentityLike(nn.Module):
    """Loses no information: 2x2 pixel blocks into channels (4 x 16 x 16), repeated to 32 channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_unshuffle(x, 2).repeat(1, 8, 1, 1)


class NoiseBottom(nn.Module):
    """Smashed data that ignores the input: pure noise from the module's own generator."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = torch.Generator().manual_seed(99)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(x), 32, 16, 16, generator=self.gen)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    train, test = make_synthetic(DatasetInfo("tiny", 2000, 200, 0), seed=5)
    return to_model_input(train.images), to_model_input(test.images)


def test_decoder_inverts_informative_smashed_data_but_not_noise(images):
    aux, targets = images
    good, orig, recon = leakage.measure_leakage(IdentityLike(), aux, targets, client_id=3, epochs=3)
    bad, _, _ = leakage.measure_leakage(NoiseBottom(), aux, targets, client_id=4, epochs=3)
    assert orig.shape == recon.shape == (200, 1, 28, 28)  # scored on the client's image, unpadded
    assert recon.min() >= 0 and recon.max() <= 1
    assert good.client_id == 3 and good.samples == 200
    assert good.mse < 0.5 * bad.mse
    assert good.psnr > bad.psnr + 3
    assert good.ssim > bad.ssim + 0.2
    # Noise is independent of the input, but 8192-d noise against 1024-d images at n=200
    # still scores about 0.7: the sample statistic's high-dimension bias.
    assert good.distance_correlation > 0.95
    assert bad.distance_correlation < good.distance_correlation - 0.1
    assert list(good.as_row()) == ["client_id", "samples", "mse", "psnr", "ssim", "distance_correlation"]
    assert good.as_row()["mse"] == good.mse


def test_train_decoder_is_seeded_and_leaves_bottom_and_global_rng_alone(images):
    aux = images[0][:256]
    bottom = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32))
    before = [t.clone() for t in bottom.state_dict().values()]
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = leakage.train_decoder(bottom, aux, epochs=1, seed=7)
    assert torch.equal(torch.rand(3), expected_draw)
    b = leakage.train_decoder(bottom, aux, epochs=1, seed=7)
    c = leakage.train_decoder(bottom, aux, epochs=1, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    # Frozen: same weights and BatchNorm statistics, and still in the mode it came in.
    assert all(torch.equal(p, q) for p, q in zip(before, bottom.state_dict().values(), strict=True))
    assert bottom.training
    assert leakage.build_decoder()(torch.zeros(2, 32, 16, 16)).shape == (2, 1, 32, 32)


def test_save_grid_writes_png_atomically(tmp_path):
    gen = torch.Generator().manual_seed(2)
    originals, recon = torch.rand(10, 1, 32, 32, generator=gen), torch.rand(10, 1, 32, 32, generator=gen)
    path = tmp_path / "grid.png"
    leakage.save_grid(originals, recon, path, count=8)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp file left behind
    with Image.open(path) as img:
        assert img.format == "PNG"
        # make_grid: 8 x 2 tiles of 32 px with 2 px padding around and between them.
        assert img.size == (8 * 34 + 2, 2 * 34 + 2)
        img.load()
    leakage.save_grid(originals[:3], recon[:3], str(path))  # fewer than count; overwrites
    with Image.open(path) as img:
        assert img.size == (3 * 34 + 2, 2 * 34 + 2)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
