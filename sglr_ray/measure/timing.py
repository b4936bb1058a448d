"""The virtual clock's inputs for a run (systems/clock.py): profiles, FLOPs and bytes per sample.

The FLOPs per sample are the method's own epoch FLOPs (its schedule's `epoch_flops`)
over the samples its schedule trains on in an epoch (`epoch_samples`), so the clock
charges exactly what the FLOPs columns record; FLOPs are linear in the batch.
"""

from __future__ import annotations

import functools

import torch

from sglr_ray.config import RunConfig
from sglr_ray.measure.flops import epoch_flops
from sglr_ray.nodes.codec import parse_codec
from sglr_ray.nodes.models import smashed_shape
from sglr_ray.systems.clock import Timing

LABEL_BYTES = 8  # int64 labels go up with the smashed data


@functools.lru_cache(maxsize=16)
def timing_for(config: RunConfig) -> Timing:
    """The Timing of a run (cached: a profile file is read once per process and configuration)."""
    flops = epoch_flops(config)
    per_client, server = config.spec.schedule.epoch_samples(config)
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    row = parse_codec(config.compress).nbytes(torch.zeros(1, *smashed_shape(config.model), dtype=dtype))
    role = config.spec.client
    return Timing(
        profiles=config.device_profiles,
        client_flops_per_sample=flops.per_client / per_client if per_client else 0.0,
        server_flops_per_sample=flops.server / server if server else 0.0,
        forward_share=role.forward_share,
        deadline_s=config.deadline_s,
        up_bytes_per_sample=row + (LABEL_BYTES if role.sends_labels else 0),
        down_bytes_per_sample=row,
    )
