"""SFL (SplitFed, Thapa et al.): PSL plus FedAvg of the client bottom models after each epoch.

The averaging itself is `aggregate.fedavg`, run by the engine when a method
lists FEDAVG_CLIENTS in its `epoch_end`.
"""

from sglr_ray.methods.base import FEDAVG_CLIENTS, Method

sfl = Method(
    "sfl",
    "SplitFed: PSL + FedAvg of bottom models",
    fixed={"alpha": 0.0, "phi": 0.0},
    epoch_end=(FEDAVG_CLIENTS,),
)
