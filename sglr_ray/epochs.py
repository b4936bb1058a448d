"""What an executor is and what an epoch and a run produce: the types the driver, the results
writer and the CLI share, on a floor of their own below all three."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sglr_ray.measure.flops import EpochFlops
from sglr_ray.nodes.server import CommLedger
from sglr_ray.systems.clock import EpochClock

ProgressFn = Callable[[int, int, float], None]  # (epoch, iterations done, running loss)


class Executor(Protocol):
    name: str
    shards: list[Any]  # ClientShard objects or their actor handles
    server: Any  # Server object or its actor handle
    clients_per_shard: int
    shard_client_ids: list[list[int]]
    partition_nbytes: list[int]  # raw bytes of each client's partition (CL uploads them once)

    # `method` is a function of the target's class (SplitShard.forward_batch) or a method's own
    # function of the target (methods/usl.py): a reference, not a name.
    def call(self, target: Any, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any: ...
    def get(self, value: Any) -> Any: ...
    def recover(self) -> None: ...  # wait until restarted actors answer again
    def close(self) -> None: ...


@dataclass
class Evaluation:
    """One evaluation: top-1 accuracy over the whole subset, and (correct, scored) per client."""

    accuracy: float
    per_client: dict[int, tuple[int, int]]


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val: Evaluation
    test: Evaluation | None  # scored after the last epoch (every epoch with --test-each-epoch)
    comm: CommLedger
    averaging_on: bool  # split-layer gradients were averaged in at least one step
    train_wall_s: float
    eval_wall_s: float
    flops: EpochFlops
    energy_j: float | None  # measured over the training part of the epoch; None without a meter
    restarts: int = 0  # times the epoch was replayed after an actor died
    clock: EpochClock | None = None  # the epoch on the virtual clock (systems/clock.py)


@dataclass
class RunOutcome:
    run_id: str
    paths: dict[str, str]
    epochs: list[EpochResult]  # the epochs this invocation ran (after the checkpoint, when resumed)
    final_test_acc: float
    wall_s: float
    run_row: dict[str, Any]  # the row recorded in runs/<run_id>.parquet, run totals included
