"""The baselines that are not parallel split learning: CL, FL (FedAvg) and SSL. SPEC section 2."""

from sglr_ray.methods.base import FEDAVG_CLIENTS, Method
from sglr_ray.methods.roles import WHOLE_MODEL
from sglr_ray.methods.schedules import LOCAL, POOLED, SEQUENTIAL

_NO_KNOBS = {"alpha": 0.0, "phi": 0.0}

cl = Method(
    "cl", "centralized: one full model on all clients' data",
    fixed=_NO_KNOBS, schedule=POOLED, client=WHOLE_MODEL,
)  # fmt: skip
fl = Method(
    "fl", "FedAvg: full models trained locally, averaged each round",
    fixed=_NO_KNOBS, schedule=LOCAL, client=WHOLE_MODEL, epoch_end=(FEDAVG_CLIENTS,),
    settings=("local_epochs",),
)  # fmt: skip
ssl = Method(
    "ssl", "sequential SL: clients take turns, passing bottom weights on",
    fixed=_NO_KNOBS, schedule=SEQUENTIAL,
)  # fmt: skip
