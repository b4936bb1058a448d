"""GPSL, PSL with global sampling (arXiv 2407.15738): a global batch of fixed size B.

Each iteration the server draws how many samples each client contributes so
that the global batch is distributed as B draws without replacement from the
union of the data the clients have left (a multivariate hypergeometric draw
over the remaining counts); each client then takes that many samples from its
own epoch order, without replacement. B (--global-batch-size) does not depend
on C, so adding clients does not grow the server's batch. An epoch has
floor(sum |D_i| / B) iterations; the remainder is dropped.

SplitAvg needs equal batches (the j-th sample of every active client shares a
gradient), which GPSL's unequal per-client batches do not give; rather than
pad or truncate gradients, GPSL fixes phi at 0. SplitLr (--alpha) applies.

The plan is a pure function of (seed, epoch, sizes), so the client shards
compute the same plan the server decides, with no extra messages.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sglr_ray.methods.base import BatchPlan, Method, RunConfig
from sglr_ray.settings import option

GLOBAL_BATCH_SIZE = option(
    int, 64, "gpsl only: samples per iteration over all clients, split among them by the server", low=1
)


def global_sampling_plan(seed: int, epoch: int, sizes: list[int], global_batch: int) -> BatchPlan:
    """Per iteration, per client: samples contributed, drawn in proportion to what each has left."""
    rng = np.random.default_rng([seed, epoch, 0x6B51])
    remaining = np.array(sizes, dtype=np.int64)
    plan = []
    for _ in range(int(remaining.sum()) // global_batch):
        counts = rng.multivariate_hypergeometric(remaining, global_batch)
        remaining -= counts
        plan.append(counts.tolist())
    return plan


def plan_for(config: RunConfig, epoch: int) -> BatchPlan:
    return global_sampling_plan(
        config.seed, epoch, [config.samples_per_client] * config.clients, config.global_batch_size
    )


def global_batch_flops(top_flops: Callable[[int], int], config: RunConfig) -> int:
    """The server steps once on the global batch of B."""
    return top_flops(config.global_batch_size)


gpsl = Method(
    "gpsl", "PSL with global sampling: a fixed global batch B shared out by the data clients have left",
    fixed={"phi": 0.0}, defaults={"alpha": 0.0}, batch_plan=plan_for, server_flops=global_batch_flops,
    options={"global_batch_size": GLOBAL_BATCH_SIZE},
)  # fmt: skip
