"""Gaussian noise on smashed data: clip each sample's smashed data to an L2 norm of CLIP_NORM,
then add N(0, (sigma * CLIP_NORM)^2) to every value, in training and whenever the client
answers the server. `--defense noise:SIGMA`.

Accounting (dp-accounting's RDP accountant): the release of one sample's clipped smashed data
is a Gaussian mechanism whose L2 sensitivity is 2 * CLIP_NORM (two inputs can land on opposite
sides of the ball), so its noise multiplier is sigma / 2. A sample is released once per
epoch, so the run composes `epochs` of them. The epsilon bounds what the smashed data alone
tells about one input image, at delta = DELTA. It does not cover what the gradients a client
sends or receives reveal, nor the labels that PSL sends up in the clear: the accountant
applies to the smashed-data channel only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sglr_ray.methods.base import RunConfig
from sglr_ray.privacy.base import Defense

CLIP_NORM = 10.0  # per-sample L2 bound on smashed data, as in examples/custom_client.py
DELTA = 1e-5


def clip_rows(s: Tensor, bound: float) -> Tensor:
    """Scale each row of s (n, ...) down to an L2 norm of at most `bound` (differentiable)."""
    norms = s.flatten(1).norm(dim=1).clamp(min=1e-12)
    return s * (bound / norms).clamp(max=1.0).view(-1, *[1] * (s.dim() - 1))


class GaussianNoise(Defense):
    name = "noise"
    summary = "clip smashed data to L2 norm 10 per sample, add N(0, (SIGMA*10)^2)"
    param_name = "sigma"
    low = 0.0

    def smashed(self, s: Tensor, x: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(s.shape, generator=generator) * (self.param * CLIP_NORM)
        return clip_rows(s, CLIP_NORM) + noise.to(s.device, s.dtype)

    def sent(self, s: Tensor, generator: torch.Generator) -> Tensor:
        return self.smashed(s, s, generator)

    def accounting(self, config: RunConfig) -> dict[str, float]:
        """epsilon at DELTA over the run's epochs (inf where sigma is 0: no noise, no bound)."""
        if self.param == 0:
            return {"epsilon": float("inf")}
        from dp_accounting import dp_event, rdp

        accountant = rdp.RdpAccountant()
        per_release = dp_event.GaussianDpEvent(self.param / 2)
        accountant.compose(dp_event.SelfComposedDpEvent(per_release, config.epochs))
        return {"epsilon": float(accountant.get_epsilon(DELTA)), "delta": DELTA}
