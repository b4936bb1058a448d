"""SGLR and its parts: PSL, SLR (SplitLr), SGL (SplitAvg), SGLR (both). SPEC section 2.

All four are parallel split learning; they differ in two knobs:
- SplitLr, alpha: the server's learning rate is eta_c * C**alpha (`split_lr`).
- SplitAvg, phi: each iteration floor(phi*C) clients, drawn at random, all
  receive the mean of their split-layer gradients in one broadcast; the
  others receive their own. `phase` limits averaging to the first or last
  ceil(F*E) epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np
import torch

from sglr_ray.methods.base import Delivery, Method, RunConfig
from sglr_ray.methods.phase import Phase


def split_lr(client_lr: float, num_clients: int, alpha: float) -> float:
    """SplitLr: eta_s = eta_c * C**alpha."""
    return client_lr * num_clients**alpha


def active_set_size(phi: float, num_clients: int) -> int:
    """|A| = floor(phi * C), exactly (phi is read as the decimal it was written as);
    a set of fewer than two clients means no averaging."""
    size = math.floor(Fraction(str(phi)) * num_clients)
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


class SplitAvg:
    """The SplitRule of SGL and SGLR."""

    def __init__(self, seed: int, phi: float, num_clients: int, phase: Phase, epochs: int) -> None:
        self.seed, self.phi, self.num_clients = seed, phi, num_clients
        self.phase, self.epochs = phase, epochs

    def deliver(self, grads: Mapping[int, torch.Tensor], epoch: int, step: int) -> Delivery:
        active: list[int] = []
        if self.phase.is_on(epoch, self.epochs):
            present = sorted(grads)
            if len(present) == self.num_clients:
                active = sample_active_clients(self.seed, epoch, step, self.phi, self.num_clients)
            else:  # some clients absent (a turn, a deadline, dropout): floor(phi * present) of those present
                drawn = sample_active_clients(self.seed, epoch, step, self.phi, len(present))
                active = [present[k] for k in drawn]
        if not active:
            return Delivery(own=dict(grads))
        own = {c: g for c, g in grads.items() if c not in active}
        return Delivery(own, split_layer_average([grads[c] for c in active]), active)


def split_avg(config: RunConfig) -> SplitAvg:
    return SplitAvg(config.seed, config.phi, config.clients, Phase.parse(config.phase), config.epochs)


psl = Method("psl", "parallel split learning", fixed={"alpha": 0.0, "phi": 0.0})
slr = Method("slr", "PSL + SplitLr", fixed={"phi": 0.0})
sgl = Method("sgl", "PSL + SplitAvg", fixed={"alpha": 0.0}, rule=split_avg)
sglr = Method("sglr", "PSL + SplitLr + SplitAvg", rule=split_avg)
