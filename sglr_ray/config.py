"""Typed, frozen run configuration, validated when built.

Every check runs before any data is loaded or any Ray work starts, and every
error names the field (as its CLI flag) and the value that was refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from sglr_ray.data import DATASETS
from sglr_ray.models import SPLIT_MODELS


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another."""


# The split methods are presets over three knobs of one engine (SPEC section 2);
# cl, fl and ssl are the baselines, each with its own way of training an epoch.
# `alpha` / `phi` = None means "the user may set it" (with the default shown);
# a number means the method fixes it.
@dataclass(frozen=True)
class MethodPreset:
    alpha: float | None  # SplitLr exponent, fixed, or None when free
    phi: float | None  # SplitAvg fraction, fixed, or None when free
    average_client_models: bool  # FedAvg of the clients' models after each epoch (SFL, FL)
    summary: str
    kind: str = "split"  # split (the PSL engine) | cl | fl | ssl

    @property
    def full_model(self) -> bool:
        """Whether a client holds the whole model (bottom + top) instead of a bottom model."""
        return self.kind in ("cl", "fl")


METHODS: dict[str, MethodPreset] = {
    "psl": MethodPreset(0.0, 0.0, False, "parallel split learning"),
    "slr": MethodPreset(None, 0.0, False, "PSL + SplitLr"),
    "sgl": MethodPreset(0.0, None, False, "PSL + SplitAvg"),
    "sglr": MethodPreset(None, None, False, "PSL + SplitLr + SplitAvg"),
    "sfl": MethodPreset(0.0, 0.0, True, "SplitFed: PSL + FedAvg of bottom models"),
    "cl": MethodPreset(0.0, 0.0, False, "centralized: one full model on all clients' data", "cl"),
    "fl": MethodPreset(0.0, 0.0, True, "FedAvg: full models trained locally, averaged each round", "fl"),
    "ssl": MethodPreset(
        0.0, 0.0, False, "sequential SL: clients take turns, passing bottom weights on", "ssl"
    ),
}
DEFAULT_ALPHA = 0.5  # the paper's Table 4 SGLR setting
DEFAULT_PHI = 0.5
OPTIMIZERS = ("adam", "sgd")
PARTITIONS = ("iid", "dirichlet")
EXECUTORS = ("local", "ray")
_PHASE_RE = re.compile(r"^(all|(initial|final):(\d*\.?\d+))$")


@dataclass(frozen=True)
class Phase:
    """When SplitAvg is switched on: every epoch, the first F, or the last F of them."""

    kind: str  # "all", "initial" or "final"
    fraction: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Phase:
        match = _PHASE_RE.match(text.strip())
        if not match:
            raise ConfigError(
                f"--phase {text!r} is malformed: use 'all', 'initial:F' or 'final:F' with F in (0, 1]"
            )
        if match.group(1) == "all":
            return cls("all")
        fraction = float(match.group(3))
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"--phase {text!r}: fraction {fraction} must be in (0, 1]")
        return cls(match.group(2), fraction)

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}:{self.fraction:g}"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one experiment. Field comments give the meaning and default."""

    method: str = "sglr"  # psl | slr | sgl | sglr | sfl, or a baseline: cl | fl | ssl
    model: str = "alexnet"  # alexnet | resnet16
    dataset: str = "fashion-mnist"  # fashion-mnist | synthetic (benchmarks and tests only)
    partition: str = "iid"  # iid (class-stratified) | dirichlet (label skew)
    dirichlet_beta: float = 0.5  # concentration for --partition dirichlet; smaller = more skew
    clients: int = 5  # C, number of clients
    samples_per_client: int = 1000  # |D_i|
    batch_size: int = 8  # b, per client per iteration
    epochs: int = 2  # E
    alpha: float | None = None  # SplitLr: server_lr = client_lr * C**alpha (None: method default)
    phi: float | None = None  # SplitAvg: fraction of clients averaged per iteration (None: default)
    phase: str = "all"  # when SplitAvg is on: all | initial:F | final:F
    local_epochs: int = 1  # fl: passes over its own data a client makes per round
    lr: float = 1e-3  # client learning rate eta_c
    optimizer: str = "adam"  # adam (betas 0.9/0.999, as in the paper) | sgd (momentum 0.9)
    seed: int = 0  # seeds model init, partitions, shuffles and active sets
    val_samples: int = 0  # validation samples per evaluation, 0 = the whole split (10k)
    test_samples: int = 0  # test samples per evaluation, 0 = the whole split (10k)
    test_each_epoch: bool = False  # evaluate on the test split every epoch, not only the last
    executor: str = "local"  # local (one process, no Ray) | ray
    clients_per_actor: int = 0  # clients per Ray shard actor, 0 = fit the cluster
    gpus_per_client: float = 0.0  # fractional GPU per client (Ray executor), 0 = CPU
    torch_threads: int = 0  # torch threads per process/actor, 0 = derive from the CPUs
    checkpoint_every: int = 1  # write a resumable checkpoint every N epochs, 0 = never
    max_restarts: int = 3  # Ray restarts of a dead actor; each replays the epoch in progress
    leakage: bool = False  # after training, attack one client's smashed data with a decoder
    leakage_client: int = 0  # the attacked client
    leakage_aux_samples: int = 5000  # server-owned training images (held by no client) for the decoder
    leakage_epochs: int = 5  # decoder training epochs
    joules_per_flop: float = 2.05e-11  # compute energy model (energy.py gives the source)
    joules_per_bit: float = 6.45e-7  # transmission energy model (energy.py gives the source)
    link_rate_bps: float = 100e6  # shared link rate R for the modelled communication time
    out: str = "out"  # results directory
    run_id: str = ""  # name of this run's files, "" = generated

    def __post_init__(self) -> None:
        _check_choice("--method", self.method, METHODS)
        _check_choice("--model", self.model, SPLIT_MODELS)
        _check_choice("--dataset", self.dataset, DATASETS)
        _check_choice("--partition", self.partition, PARTITIONS)
        _check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("--executor", self.executor, EXECUTORS)
        for flag, value in [
            ("--clients", self.clients),
            ("--samples-per-client", self.samples_per_client),
            ("--batch-size", self.batch_size),
            ("--epochs", self.epochs),
            ("--local-epochs", self.local_epochs),
        ]:
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
        for flag, value in [
            ("--val-samples", self.val_samples),
            ("--test-samples", self.test_samples),
            ("--clients-per-actor", self.clients_per_actor),
            ("--torch-threads", self.torch_threads),
            ("--checkpoint-every", self.checkpoint_every),
            ("--max-restarts", self.max_restarts),
        ]:
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{flag} must be a non-negative integer, got {value!r}")
        if self.local_epochs != 1 and self.method != "fl":
            raise ConfigError(f"--local-epochs {self.local_epochs} applies to --method fl only")
        if self.leakage:
            self._check_leakage()
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr!r}")
        if not self.dirichlet_beta > 0:
            raise ConfigError(f"--dirichlet-beta must be positive, got {self.dirichlet_beta!r}")
        for flag, value in [
            ("--joules-per-flop", self.joules_per_flop),
            ("--joules-per-bit", self.joules_per_bit),
            ("--link-rate-bps", self.link_rate_bps),
        ]:
            if not value > 0:
                raise ConfigError(f"{flag} must be positive, got {value!r}")
        if self.gpus_per_client < 0:
            raise ConfigError(f"--gpus-per-client must be >= 0, got {self.gpus_per_client!r}")
        if self.run_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.run_id):
            raise ConfigError(f"--run-id {self.run_id!r}: use letters, digits, '.', '_' and '-'")
        self._check_knobs()
        Phase.parse(self.phase)
        self._check_sizes()

    def _check_knobs(self) -> None:
        preset = METHODS[self.method]
        for flag, value, fixed, default in [
            ("--alpha", self.alpha, preset.alpha, DEFAULT_ALPHA),
            ("--phi", self.phi, preset.phi, DEFAULT_PHI),
        ]:
            if value is not None and fixed is not None and value != fixed:
                free = [m for m, p in METHODS.items() if getattr(p, flag[2:]) is None]
                raise ConfigError(
                    f"{flag} {value} does not apply to --method {self.method}, which fixes it at "
                    f"{fixed:g}; methods that take {flag}: {', '.join(free)}"
                )
            resolved = fixed if fixed is not None else (default if value is None else value)
            object.__setattr__(self, flag[2:], float(resolved))
        if self.alpha < 0:
            raise ConfigError(f"--alpha must be >= 0, got {self.alpha}")
        if not 0.0 <= self.phi <= 1.0:
            raise ConfigError(f"--phi must be in [0, 1], got {self.phi}")

    def _check_sizes(self) -> None:
        meta = DATASETS[self.dataset]
        needed = self.clients * self.samples_per_client
        if needed > meta.train_pool:
            raise ConfigError(
                f"--clients {self.clients} x --samples-per-client {self.samples_per_client} = "
                f"{needed} samples, but {self.dataset} has {meta.train_pool} training samples "
                f"left after the {meta.val_size}-sample validation split"
            )
        if self.batch_size > self.samples_per_client:
            raise ConfigError(
                f"--batch-size {self.batch_size} is larger than a client's partition "
                f"(--samples-per-client {self.samples_per_client})"
            )

    def _check_leakage(self) -> None:
        if self.preset.full_model:
            raise ConfigError(f"--leakage needs smashed data; --method {self.method} sends none")
        if not 0 <= self.leakage_client < self.clients:
            raise ConfigError(f"--leakage-client {self.leakage_client} must be in [0, {self.clients - 1}]")
        for flag, value in [("--leakage-aux-samples", self.leakage_aux_samples),
                            ("--leakage-epochs", self.leakage_epochs)]:  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
        meta = DATASETS[self.dataset]
        spare = meta.train_pool - self.clients * self.samples_per_client
        if self.leakage_aux_samples > spare:
            raise ConfigError(
                f"--leakage-aux-samples {self.leakage_aux_samples} exceeds the {spare} training samples "
                f"no client holds ({meta.train_pool} - {self.clients} x {self.samples_per_client})"
            )

    # --- derived values ---------------------------------------------------------

    @property
    def preset(self) -> MethodPreset:
        return METHODS[self.method]

    @property
    def server_lr(self) -> float:
        """SplitLr (SPEC section 2): eta_s = eta_c * C**alpha."""
        return server_lr(self.lr, self.clients, self.alpha)

    @property
    def steps_per_epoch(self) -> int:
        """Batches in one client's partition; a last partial batch is dropped (SplitAvg needs equal ones)."""
        return self.samples_per_client // self.batch_size

    @property
    def iterations_per_epoch(self) -> int:
        """Optimizer steps of the whole system in one epoch, as a progress bar counts them."""
        kind = self.preset.kind
        if kind == "cl":  # one model, batches of b over the union of the partitions
            return self.clients * self.samples_per_client // self.batch_size
        if kind == "ssl":  # clients take turns
            return self.clients * self.steps_per_epoch
        if kind == "fl":  # clients train in parallel, local_epochs passes each
            return self.local_epochs * self.steps_per_epoch
        return self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def server_lr(client_lr: float, num_clients: int, alpha: float) -> float:
    """SplitLr: the server's learning rate grows with the number of clients as C**alpha."""
    return client_lr * num_clients**alpha


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(RunConfig))


def check_writable(out: str) -> None:
    """Fail early, naming the directory, if results cannot be written under `out`."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-probe-{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as ex:
        raise ConfigError(f"--out {out!r} is not writable: {ex.strerror or ex}") from ex


def _check_choice(flag: str, value: str, allowed: dict | tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{flag} {value!r} is unknown; choose one of: {', '.join(allowed)}")
