"""The checks of a run's settings against each other, the model, the dataset and the method:
run by RunConfig when it is made, so every error comes before any data is loaded or any Ray
work starts, and names the setting (as its flag) and the value refused."""

from __future__ import annotations

import dataclasses
from typing import Any

from sglr_ray.data import check_sizes as check_dataset_sizes
from sglr_ray.datasets import DATASETS, check_dataset_name
from sglr_ray.methods import METHODS, Method
from sglr_ray.nodes.codec import parse_codec
from sglr_ray.nodes.models import ModelError, declaration
from sglr_ray.settings import ConfigError, flag


def _default(config: Any, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(config) if f.name == name)


def check_model_and_dataset(config: Any) -> None:
    """Names only: the model's declaration imports, the dataset is known. The cut and the
    model's shapes are checked against the data in `check_model`, before any training."""
    try:
        declaration(config.model)
    except ModelError as ex:
        raise ConfigError(str(ex)) from ex
    check_dataset_name(config.dataset)


def check_sizes(config: Any) -> None:
    """Batch and partition sizes against each other and, for a built-in dataset, against its splits."""
    if config.batch_size > config.samples_per_client:
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than a client's partition "
            f"(--samples-per-client {config.samples_per_client})"
        )
    if config.dataset in DATASETS:  # a file dataset's sizes are checked when it is loaded
        check_dataset_sizes(config, DATASETS[config.dataset])


def check_systems(config: Any, method: Method) -> None:
    """The systems model's settings (SPEC section 4): every profile is read and checked here."""
    if config.dropout >= 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {config.dropout!r}")
    if config.clients_per_round > config.clients:
        raise ConfigError(
            f"--clients-per-round {config.clients_per_round} is more than --clients {config.clients}"
        )
    for name in ("clients_per_round", "dropout", "deadline_s"):
        if getattr(config, name) != _default(config, name) and name not in method.schedule.absences:
            takes = [m for m, spec in METHODS.items() if name in spec.schedule.absences]
            raise ConfigError(
                f"{flag(name)} does not apply to --method {config.method}; methods that take it: "
                f"{', '.join(takes)}"
            )
    config.device_profiles  # noqa: B018 -- loads and checks --devices before any work
    try:
        parse_codec(config.compress)
    except ValueError as ex:
        raise ConfigError(f"--compress {ex}") from ex


def check_leakage(config: Any, method: Method, aux: bool) -> None:
    """--leakage and the attacks: the method must send smashed data; `aux`: the attacker's own
    images must exist beside the clients'."""
    if not method.client.sends_smashed:
        raise ConfigError(f"--leakage needs smashed data; --method {config.method} sends none")
    if config.leakage_client >= config.clients:
        raise ConfigError(f"--leakage-client {config.leakage_client} must be in [0, {config.clients - 1}]")
    if not aux or config.dataset not in DATASETS:
        return
    meta = DATASETS[config.dataset]
    spare = meta.train_pool - config.clients * config.samples_per_client
    if config.leakage_aux_samples > spare:
        raise ConfigError(
            f"--leakage-aux-samples {config.leakage_aux_samples} exceeds the {spare} training samples "
            f"no client holds ({meta.train_pool} - {config.clients} x {config.samples_per_client})"
        )
