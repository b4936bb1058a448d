"""The baselines that are not parallel split learning: CL, FL (FedAvg) and SSL. SPEC section 2."""

from sglr_ray.methods.base import FEDAVG_CLIENTS, Method
from sglr_ray.methods.roles import WHOLE_MODEL
from sglr_ray.methods.schedules import LOCAL, POOLED, SEQUENTIAL
from sglr_ray.settings import option

_NO_KNOBS = {"alpha": 0.0, "phi": 0.0}
LOCAL_EPOCHS = option(int, 1, "fl only: passes a client makes over its own data per round", low=1)

cl = Method(
    "cl", "centralized: one full model on all clients' data",
    fixed=_NO_KNOBS, schedule=POOLED, client=WHOLE_MODEL,
)  # fmt: skip
fl = Method(
    "fl", "FedAvg: full models trained locally, averaged each round",
    fixed=_NO_KNOBS, schedule=LOCAL, client=WHOLE_MODEL, epoch_end=(FEDAVG_CLIENTS,),
    options={"local_epochs": LOCAL_EPOCHS},
)  # fmt: skip
ssl = Method(
    "ssl", "sequential SL: clients take turns, passing bottom weights on",
    fixed=_NO_KNOBS, schedule=SEQUENTIAL,
)  # fmt: skip
