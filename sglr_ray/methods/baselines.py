"""The baselines that are not parallel split learning: CL, FL (FedAvg) and SSL. SPEC section 2."""

from sglr_ray.methods.base import Method

_NO_KNOBS = {"alpha": 0.0, "phi": 0.0}

cl = Method(
    "cl", "centralized: one full model on all clients' data",
    fixed=_NO_KNOBS, schedule="local", full_model=True, pooled_data=True,
)  # fmt: skip
fl = Method(
    "fl", "FedAvg: full models trained locally, averaged each round",
    fixed=_NO_KNOBS, schedule="local", full_model=True, average_clients=True, settings=("local_epochs",),
)  # fmt: skip
ssl = Method(
    "ssl", "sequential SL: clients take turns, passing bottom weights on",
    fixed=_NO_KNOBS, schedule="sequential",
)  # fmt: skip
