"""NoPeek (Vepakomma et al. 2020): each client adds LAMBDA * dCor(x, s) to its loss, the
distance correlation between its batch's inputs and smashed data, so the bottom model learns
features that carry less about the raw image. `--defense nopeek:LAMBDA`.

The smashed data sent is unchanged; only the client's gradient differs. The extra gradient
rides on the upload's graph (`with_extra_loss`), so the method's own backward step applies
it without knowing of it. No accountant applies: NoPeek gives no formal guarantee.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sglr_ray.privacy.base import Defense
from sglr_ray.privacy.metrics import distance_correlation_loss


class _ExtraLoss(torch.autograd.Function):
    """Identity on s; backward also sends gradient 1 into `loss`, adding it to the total."""

    @staticmethod
    def forward(ctx, s: Tensor, loss: Tensor) -> Tensor:
        return s.view_as(s)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, torch.ones((), dtype=grad.dtype, device=grad.device)


def with_extra_loss(s: Tensor, loss: Tensor) -> Tensor:
    """s, whose backward(g) also back-propagates `loss` (as if it were added to the loss)."""
    return _ExtraLoss.apply(s, loss)


class NoPeek(Defense):
    name = "nopeek"
    summary = "add LAMBDA * distance correlation(inputs, smashed data) to each client's loss"
    param_name = "lambda"
    low = 0.0

    def smashed(self, s: Tensor, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.param == 0:
            return s
        return with_extra_loss(s, self.param * distance_correlation_loss(x.float(), s.float()))
