"""Label randomized response for U-shaped split learning: each client trains its tail on
labels passed through K-ary randomized response with privacy parameter EPSILON (keep the
label with probability e^eps / (e^eps + K - 1), else draw one of the other K - 1 uniformly),
so the gradients it uploads derive from noisy labels. `--defense label-rr:EPSILON`.

Each training label is an epsilon-label-DP release per use (Ghazi et al. 2021); a label
used in E epochs is released E times with fresh randomness, so by basic composition the run
is (E * epsilon)-label-DP (reported as `epsilon`). Where labels go up to the server (PSL and
every method but usl) the server reads them directly, so the defense applies to usl only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sglr_ray.methods.base import Method, RunConfig
from sglr_ray.nodes.models import NUM_CLASSES
from sglr_ray.privacy.base import Defense


def randomized_response(y: Tensor, epsilon: float, classes: int, generator: torch.Generator) -> Tensor:
    """K-ary randomized response on labels y (n,): keep with prob e^eps / (e^eps + K - 1)."""
    keep_p = 1.0 if math.isinf(epsilon) else math.exp(epsilon) / (math.exp(epsilon) + classes - 1)
    keep = torch.rand(len(y), generator=generator) < keep_p
    # Another class, uniformly: shift by 1..K-1 modulo K.
    shift = torch.randint(1, classes, (len(y),), generator=generator)
    flipped = (y.cpu() + shift) % classes
    return torch.where(keep, y.cpu(), flipped).to(y.device)


class LabelRR(Defense):
    name = "label-rr"
    summary = "usl: train on labels through K-ary randomized response with EPSILON"
    param_name = "epsilon"
    low, low_open = 0.0, True

    def applies(self, method: Method) -> str | None:
        if method.client.sends_labels or method.client.whole_model:
            return "whose labels are not kept on the clients (only usl keeps them there)"
        return None

    def labels(self, y: Tensor, generator: torch.Generator) -> Tensor:
        return randomized_response(y, self.param, NUM_CLASSES, generator)

    def accounting(self, config: RunConfig) -> dict[str, float]:
        return {"epsilon": self.param * config.epochs}
