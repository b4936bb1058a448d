"""Device profiles: each client's compute speed and links, and the server's (SPEC section 4).

`--devices` is `homogeneous` (every client at --client-flops-per-s and --link-rate-bps both
ways: the model every earlier run had), `lognormal:SIGMA` (each client's speed and each of
its links drawn independently as the default times exp(SIGMA * z), z standard normal, seeded
by the run's seed: the median client is the default one), or a CSV or Parquet file with
columns client_id, flops_per_s, up_bps, down_bps and optionally availability (the chance a
client is there at a round or an iteration, in (0, 1]). Every check here runs when the
configuration is built, before any data is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sglr_ray.settings import ConfigError

HOMOGENEOUS = "homogeneous"
REQUIRED_COLUMNS = ("client_id", "flops_per_s", "up_bps", "down_bps")
RATE_COLUMNS = ("flops_per_s", "up_bps", "down_bps")


@dataclass(frozen=True)
class DeviceProfiles:
    """Per client (index = client id): FLOP/s, uplink and downlink bit/s, availability; the server's."""

    flops_per_s: tuple[float, ...]
    up_bps: tuple[float, ...]
    down_bps: tuple[float, ...]
    availability: tuple[float, ...]
    server_flops_per_s: float
    server_link_bps: float

    @property
    def always_available(self) -> bool:
        return all(a == 1.0 for a in self.availability)


def load_profiles(
    spec: str,
    clients: int,
    seed: int,
    client_flops_per_s: float,
    link_bps: float,
    server_flops_per_s: float,
    server_link_bps: float,
) -> DeviceProfiles:
    """The run's profiles from --devices (see the module docstring); ConfigError naming --devices."""
    server = (server_flops_per_s, server_link_bps)
    if spec == HOMOGENEOUS:
        same = (client_flops_per_s,) * clients, (link_bps,) * clients, (link_bps,) * clients
        return DeviceProfiles(*same, (1.0,) * clients, *server)
    if spec.startswith("lognormal:"):
        sigma = _parse_sigma(spec)
        rng = np.random.default_rng([seed, 0xDE71CE])
        factors = np.exp(sigma * rng.standard_normal((3, clients)))
        flops, up, down = (tuple(float(v * f) for f in row) for v, row in
                           zip((client_flops_per_s, link_bps, link_bps), factors, strict=True))  # fmt: skip
        return DeviceProfiles(flops, up, down, (1.0,) * clients, *server)
    if Path(spec).suffix.lower() in (".csv", ".parquet"):
        return _from_file(Path(spec), clients, *server)
    raise ConfigError(
        f"--devices {spec!r} is unknown; use {HOMOGENEOUS}, lognormal:SIGMA or a .csv/.parquet file"
    )


def _parse_sigma(spec: str) -> float:
    try:
        sigma = float(spec.partition(":")[2])
    except ValueError as ex:
        raise ConfigError(f"--devices {spec!r}: SIGMA must be a number, as in lognormal:0.5") from ex
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"--devices {spec!r}: SIGMA must be >= 0")
    return sigma


def _from_file(path: Path, clients: int, server_flops_per_s: float, server_link_bps: float) -> DeviceProfiles:
    import pandas as pd  # only for a profile file: the CLI need not load pandas otherwise

    try:
        frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as ex:
        raise ConfigError(f"--devices {str(path)!r} could not be read: {ex}") from ex
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"--devices {str(path)!r} lacks columns {missing}; needs {list(REQUIRED_COLUMNS)}")
    if frame["client_id"].duplicated().any():
        raise ConfigError(f"--devices {str(path)!r} lists a client_id more than once")
    rows = frame.set_index("client_id")
    absent = [c for c in range(clients) if c not in rows.index]
    if absent:
        raise ConfigError(
            f"--devices {str(path)!r} has no row for clients {absent[:5]} (--clients {clients})"
        )
    rows = rows.loc[list(range(clients))]
    for column in RATE_COLUMNS:
        values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
        if not (np.isfinite(values) & (values > 0)).all():
            raise ConfigError(f"--devices {str(path)!r}: {column} must be a positive number for every client")
    availability = rows["availability"] if "availability" in rows else pd.Series(1.0, index=rows.index)
    available = pd.to_numeric(availability, errors="coerce").to_numpy(dtype=float)
    if not ((available > 0) & (available <= 1)).all():
        raise ConfigError(f"--devices {str(path)!r}: availability must be in (0, 1] for every client")
    rates = [tuple(float(v) for v in rows[c]) for c in RATE_COLUMNS]
    return DeviceProfiles(*rates, tuple(float(a) for a in available), server_flops_per_s, server_link_bps)
