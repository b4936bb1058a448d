"""FedAvg arithmetic, as pure functions (SFL and FL average client models with it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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

    Sums are float64 (see `weighted_state_sum`); the mean is cast back to the states' dtype.
    """
    weight = sum(w for _, w in partials)
    summed = weighted_state_sum([s for s, _ in partials], [1.0] * len(partials))
    dtype = torch.get_default_dtype()
    return {k: (v / weight).to(dtype) if v.is_floating_point() else v for k, v in summed.items()}
