"""The communication model: the paper's per-epoch totals, this simulator's exact ones, link time.

Notation (SPEC section 4): S(L) smashed bytes per sample, |D| samples in an
epoch over all clients, C clients, S(w) the full model, S(w_c) the client model.

The paper's totals count S(L) per sample both ways and, for SGLR, one extra
S(L) for the averaged gradient. What the simulator moves (and measures) also
has the labels going up, and a broadcast per iteration carrying a batch of b
averaged gradients, so its SGLR total is (2 - |A|/C)|D|S(L) + (|D|/C)S(L)
plus labels; `expected_epoch_bytes` gives those exact figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from sglr_ray.methods.sglr import active_set_size


@dataclass(frozen=True)
class Sizes:
    smashed_bytes: float  # S(L), per sample
    samples: int  # |D|, per epoch, all clients together
    clients: int  # C
    model_bytes: float = 0.0  # S(w)
    client_model_bytes: float = 0.0  # S(w_c)
    label_bytes: float = 0.0  # per sample


def paper_epoch_bytes(method: str, sizes: Sizes, phi: float = 0.0) -> float:
    """The paper's analytic per-epoch totals: fl, psl, sfl, sglr."""
    d, s_l = sizes.samples, sizes.smashed_bytes
    totals = {
        "fl": lambda: 2 * sizes.clients * sizes.model_bytes,
        "psl": lambda: 2 * d * s_l,
        "sfl": lambda: 2 * d * s_l + 2 * sizes.clients * sizes.client_model_bytes,
        "sglr": lambda: (2 - phi) * d * s_l + s_l,
    }
    if method not in totals:
        raise ValueError(f"no analytic total for method {method!r}; known: {', '.join(totals)}")
    return totals[method]()


def saving(method: str, versus: str, sizes: Sizes, phi: float) -> float:
    """Fraction of `versus`'s traffic that `method` saves (0.886 means 88.6% less)."""
    return 1 - paper_epoch_bytes(method, sizes, phi) / paper_epoch_bytes(versus, sizes, phi)


@dataclass(frozen=True)
class EpochBytes:
    up: int  # clients to server
    down: int  # received by clients (a broadcast counts once per receiver)
    server_sent: int  # left the server (a broadcast counts once)

    @property
    def on_the_wire(self) -> int:
        return self.up + self.server_sent


def expected_epoch_bytes(
    sizes: Sizes, batch_size: int, phi: float, averaging_on: bool, average_client_models: bool
) -> EpochBytes:
    """Exactly what a split method of this simulator moves in one epoch (SplitAvg on or off)."""
    d, s_l, c = sizes.samples, sizes.smashed_bytes, sizes.clients
    active = active_set_size(phi, c) if averaging_on else 0
    steps = d // (c * batch_size)
    up = d * (s_l + sizes.label_bytes)
    down = d * s_l  # own or averaged, every client receives one gradient per sample
    broadcast = steps * batch_size * s_l if active else 0
    server_sent = (c - active) * steps * batch_size * s_l + broadcast
    if average_client_models:
        weights = c * sizes.client_model_bytes
        up, down, server_sent = up + weights, down + weights, server_sent + weights
    return EpochBytes(int(up), int(down), int(server_sent))


def comm_time_s(bytes_up: int, bytes_server_sent: int, link_rate_bps: float) -> float:
    """Seconds on a shared link of rate R: unicasts share R, a broadcast is sent once at R.

    Both reduce to (bits on the wire) / R, because a broadcast is counted once in
    bytes_server_sent.
    """
    return 8 * (bytes_up + bytes_server_sent) / link_rate_bps
