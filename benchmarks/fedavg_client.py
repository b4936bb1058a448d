"""One FedAvg client's round as Flower's ClientApp in benchmarks/flower_side.py runs it.

Plain torch and sglr-ray's pure-torch helpers (no Ray, no flwr), so it runs under
both virtual environments and a unit test can check it against sglr-ray's FL
(`LocalShard.train_local`): same model, same batches, same optimizer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sglr_ray.data import epoch_order, to_model_input
from sglr_ray.nodes.models import build_client_model


def train_client(
    state: dict[str, torch.Tensor],
    images: np.ndarray,
    labels: np.ndarray,
    client_id: int,
    seed: int,
    batch_size: int,
    lr: float,
    model: str = "alexnet",
) -> tuple[dict[str, torch.Tensor], float, int]:
    """One local epoch of client `client_id` from the global `state`, with a fresh Adam.

    The client visits its partition in `epoch_order(seed, client_id, 0, n)`, b samples a
    step, as sglr-ray's FL clients do in round 0. Returns (its new state, the sum of
    per-sample losses, samples trained).
    """
    network = build_client_model(model, seed, full=True)
    network.load_state_dict(state)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, fused=True)  # as make_optimizer builds it
    order = epoch_order(seed, client_id, 0, len(labels)).numpy()
    loss_sum, samples = 0.0, 0
    for step in range(len(labels) // batch_size):
        index = order[step * batch_size : (step + 1) * batch_size]
        x, y = to_model_input(images[index]), torch.from_numpy(labels[index])
        loss = F.cross_entropy(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum, samples = loss_sum + loss.item() * len(y), samples + len(y)
    return network.state_dict(), loss_sum, samples
