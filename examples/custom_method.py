"""A method of your own in one file: split-layer gradient median (SGM).

Run it like a built-in method, on either executor:

    python -m sglr_ray run --method examples/custom_method.py:sgm --clients 6 --epochs 2
    python -m sglr_ray run --method examples/custom_method.py:sgm --executor ray

The engine does everything PSL does (clients forward, the server runs one
loss over the concatenated batch and computes each client's split-layer
gradient G_i); this file only decides what the clients receive. SGM sends
every client the same tensor, the element-wise median of all G_i: like
SplitAvg with phi = 1, but robust to a few clients whose gradients are far
off (a median ignores outliers a mean would follow). One broadcast per
iteration, so the byte ledger counts it once in the server's bytes sent.

Everything used here is public API: `Method`, `Delivery` and the SplitRule
protocol (`deliver(grads, epoch, step) -> Delivery`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sglr_ray.methods import Delivery, Method


class SplitMedian:
    """SplitRule: every client receives the element-wise median of the clients' G_i."""

    def deliver(self, grads: Mapping[int, torch.Tensor], epoch: int, step: int) -> Delivery:
        if len(grads) < 2:  # nothing to take a median over (one client, or SSL's turn)
            return Delivery(own=dict(grads))
        shapes = {tuple(g.shape) for g in grads.values()}
        if len(shapes) != 1:
            raise ValueError(f"the split-layer median needs equal batch shapes, got {sorted(shapes)}")
        median = torch.stack(list(grads.values())).median(dim=0).values
        return Delivery(own={}, shared=median, shared_to=sorted(grads))


sgm = Method(
    name="sgm",
    summary="split-layer gradient median: every client receives the element-wise median of the G_i",
    fixed={"phi": 0.0},  # the median replaces SplitAvg; SplitLr (--alpha) still applies
    defaults={"alpha": 0.0},
    rule=lambda config: SplitMedian(),
)
