"""Which shard a run's clients live in: `make_shard` picks by the method's client role."""

from __future__ import annotations

from sglr_ray.data import ImageSet
from sglr_ray.nodes.client import ClientShard
from sglr_ray.nodes.local_shard import LocalShard
from sglr_ray.nodes.specs import NodeSettings
from sglr_ray.nodes.split_shard import SplitShard

__all__ = ["ClientShard", "LocalShard", "SplitShard", "make_shard"]


def make_shard(
    config: NodeSettings,
    client_ids: list[int],
    partitions: list[ImageSet],
    val: ImageSet,
    test: ImageSet,
    device: str = "cpu",
) -> ClientShard:
    """A local-training shard where clients hold the whole model (CL, FL), else a split one."""
    kind = LocalShard if config.spec.client.whole_model else SplitShard
    return kind(config, client_ids, partitions, val, test, device)
