"""The arithmetic of SGLR, as pure functions: SplitAvg, the phase schedule, FedAvg.

SplitLr is one line (`config.server_lr`); everything else that decides what a
client receives lives here, so it can be tested without models or Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from sglr_ray.config import Phase


def averaging_enabled(phase: Phase, epoch: int, epochs: int) -> bool:
    """Is SplitAvg on in `epoch` (0-based) of `epochs`?

    SPEC: initial:F means e < F*E, final:F means e >= (1-F)*E.
    """
    if phase.kind == "all":
        return True
    if phase.kind == "initial":
        return epoch < phase.fraction * epochs
    return epoch >= (1.0 - phase.fraction) * epochs


def active_set_size(phi: float, num_clients: int) -> int:
    """|A| = floor(phi * C); a set of fewer than two clients means no averaging."""
    # The epsilon keeps e.g. 0.3 * 10 = 2.9999999999999996 from flooring to 2.
    size = math.floor(phi * num_clients + 1e-9)
    return size if size >= 2 else 0


def sample_active_clients(seed: int, epoch: int, step: int, phi: float, num_clients: int) -> list[int]:
    """The clients averaged at (epoch, step): floor(phi*C) of them, uniformly without replacement.

    Seeded by (seed, epoch, step) alone, so a replayed or resumed step draws the same set.
    """
    size = active_set_size(phi, num_clients)
    if size == 0:
        return []
    rng = np.random.default_rng([seed, epoch, step, 0xA5])
    return sorted(int(c) for c in rng.choice(num_clients, size=size, replace=False))


def split_layer_average(gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """G_avg = (1/|A|) sum_k G_k, element by element; all G_k must have the same shape."""
    shapes = {tuple(g.shape) for g in gradients}
    if len(shapes) != 1:
        raise ValueError(f"split-layer averaging needs equal batch shapes, got {sorted(shapes)}")
    return torch.stack(list(gradients)).mean(dim=0)


def weighted_state_sum(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i in float64; integer buffers (BN batch counters) keep the first state's value."""
    total: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total[key] = sum(w * s[key].double() for s, w in zip(states, weights, strict=True))
        else:
            total[key] = first.clone()
    return total


def fedavg(partials: Sequence[tuple[dict[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    """Combine per-shard (weighted state sum, total weight) pairs into the data-weighted mean state.

    Sums are float64 (see `weighted_state_sum`); the mean is cast back to float32.
    """
    weight = sum(w for _, w in partials)
    summed = weighted_state_sum([s for s, _ in partials], [1.0] * len(partials))
    return {k: (v / weight).float() if v.is_floating_point() else v for k, v in summed.items()}
