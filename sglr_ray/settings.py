"""How a setting is declared and checked, for any settings dataclass (config.py has the one).

A setting is a dataclass field made by `setting()`: its default, help text,
range or choices, and whether it can change a recorded number. `checked_value`
applies those rules to a value from a flag or a config file alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another."""


def flag(name: str) -> str:
    """A setting's command-line flag: clients_per_actor -> --clients-per-actor."""
    return "--" + name.replace("_", "-")


def setting(
    default: Any,
    help: str,
    *,
    identity: bool = True,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    absent_means: Any = None,
    identity_when_set: bool = False,
) -> Any:
    """A RunConfig field with its metadata.

    identity: whether the setting can change a recorded number; those settings
      make up a run's identity. Where and how a run executes (executor, threads,
      checkpoints) cannot, by design: the executors are checked to agree.
    low/high: inclusive bounds (low_open: strictly greater than low).
    absent_means: for a setting added after runs were recorded, the value that reproduces
      what the code did before it existed. At that value the setting stays out of the
      identity hash, so those runs keep their names and a sweep does not redo them.
    identity_when_set: for a setting added later that changes a recorded number only away
      from `absent_means` (the systems model): it joins a run's identity there and stays out
      of it at that value, so the identity of every earlier run is exactly what it was.
    """
    if identity_when_set and (absent_means is None or identity):
        raise ValueError("identity_when_set needs absent_means and identity=False")
    meta = {"help": help, "identity": identity, "choices": choices, "low": low, "high": high,
            "low_open": low_open, "absent_means": absent_means,
            "identity_when_set": identity_when_set}  # fmt: skip
    return field(default=default, metadata=meta)


def checked_value(f: dataclasses.Field, kind: type, value: Any) -> Any:
    """`value` as the setting's type, or a ConfigError naming the setting. Applies to flags
    and config files alike: a string for a number, 2.5 for a count, nan, out-of-range values."""
    meta, name = f.metadata, flag(f.name)
    if value is None and f.default is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    elif not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{name} {value!r} is unknown; choose one of: {', '.join(meta['choices'])}")
    low, high = meta["low"], meta["high"]
    below = low is not None and (value <= low if meta["low_open"] else value < low)
    if below or (high is not None and value > high):
        bounds = [] if low is None else [f"> {low:.12g}" if meta["low_open"] else f">= {low:.12g}"]
        bounds += [] if high is None else [f"<= {high:.12g}"]
        raise ConfigError(f"{name} must be {' and '.join(bounds)}, got {value!r}")
    return value
