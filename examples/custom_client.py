"""A method of your own that changes what a client does: noisy smashed data (NSD).

Run it like a built-in method, on either executor:

    python -m sglr_ray run --method examples/custom_client.py:nsd --clients 4 --epochs 2
    python -m sglr_ray run --method examples/custom_client.py:nsd --executor ray

Each client clips every sample's smashed data to an L2 norm of at most
CLIP_NORM and adds Gaussian noise of standard deviation SIGMA * CLIP_NORM
before uploading it, a common defense against a server that inverts smashed
data. The gradient the server returns flows back through the clipping (the
noise is a constant added to the graph). Everything else is PSL's.

The hook is a ClientRole (sglr_ray.methods.roles): `forward` says what a client
computes before upload; `backward`, `build_client`, `eval_pair` keep PSL's.
Its randomness comes from `ctx.generator()`, seeded by (seed, client, epoch,
step), so both executors, replayed epochs and resumed runs draw the same noise.
"""

from __future__ import annotations

import torch

from sglr_ray.methods import Method
from sglr_ray.methods.roles import ClientRole, StepContext

CLIP_NORM = 10.0  # per-sample L2 bound on the smashed data
SIGMA = 0.1  # noise standard deviation, in units of CLIP_NORM


class NoisySmashedData(ClientRole):
    grouped = False  # the hook runs per client (the grouped path computes PSL's forward only)

    def forward(self, model, optimizer, x: torch.Tensor, y: torch.Tensor, ctx: StepContext):
        smashed = model(x)
        norms = smashed.flatten(1).norm(dim=1).clamp(min=1e-12)
        scale = (CLIP_NORM / norms).clamp(max=1.0).view(-1, *[1] * (smashed.dim() - 1))
        noise = torch.randn(smashed.shape, generator=ctx.generator()) * SIGMA * CLIP_NORM
        noisy = smashed * scale + noise.to(smashed.device, smashed.dtype)
        return noisy, noisy  # the gradient from the server flows back through `noisy`


nsd = Method(
    name="nsd",
    summary="PSL whose clients clip their smashed data and add Gaussian noise before upload",
    fixed={"phi": 0.0},
    defaults={"alpha": 0.0},
    client=NoisySmashedData(),
)
