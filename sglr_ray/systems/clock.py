"""The virtual clock (SPEC section 4): simulated seconds from the FLOPs and bytes a run moves.

Nothing here reads this machine's clock. A run is a sequence of phases, each a
barrier: every client taking part computes its share before the upload
(`forward_share` of its per-sample FLOPs), uploads, the server computes and
sends (a broadcast leaves its link once), then every client downloads and
finishes. One formula covers every synchronous schedule:

  T = max_i (fwd_i/F_i + up_i/U_i) + server/F_s + sent/S + max_i (down_i/D_i + bwd_i/F_i)

over the clients taking part. A PSL iteration is one phase; SSL's turns are
phases of one client each, so they add up; an FL round is one phase whose
work is the local training and whose bytes are the model going up and the
mean coming back. With a deadline, the server waits for the uploads that
arrive by T_d (and no longer than that once one is late); the late clients'
uploads still count as sent, and they receive nothing.

Bytes are in bytes and rates in bit/s, so transfers cost 8 * bytes / rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sglr_ray.systems.devices import DeviceProfiles


@dataclass(frozen=True)
class Timing:
    """What the clock needs besides the bytes: profiles and FLOPs per sample (measure/timing.py)."""

    profiles: DeviceProfiles
    client_flops_per_sample: float  # one training sample's FLOPs on a client (forward and backward)
    server_flops_per_sample: float  # the server's FLOPs for one client sample it serves
    forward_share: float = 0.5  # of a client's per-sample FLOPs spent before its upload
    deadline_s: float = 0.0  # 0: the server waits for every upload
    # What the ledger will count per sample, for a schedule that must time a step before it runs (asl).
    up_bytes_per_sample: float = 0.0
    down_bytes_per_sample: float = 0.0


@dataclass
class Phase:
    """One barrier of the run as the server's ledger saw it; bytes by client id."""

    samples: dict[int, int] = field(default_factory=dict)  # samples each client computed on
    up: dict[int, int] = field(default_factory=dict)
    down: dict[int, int] = field(default_factory=dict)
    server_samples: int = 0  # client samples the server computed on
    server_sent: int = 0  # bytes that left the server's link (a broadcast once)
    late: tuple[int, ...] = ()  # clients whose upload missed the deadline

    @property
    def clients(self) -> list[int]:
        return sorted(set(self.samples) | set(self.up) | set(self.down))


def transfer_s(nbytes: float, bps: float) -> float:
    return 8.0 * nbytes / bps


def upload_s(timing: Timing, client: int, samples: int, up_bytes: float) -> float:
    """A client's forward share of its compute, then its upload: when the upload reaches the server."""
    p = timing.profiles
    forward = samples * timing.client_flops_per_sample * timing.forward_share / p.flops_per_s[client]
    return forward + transfer_s(up_bytes, p.up_bps[client])


def download_s(timing: Timing, client: int, samples: int, down_bytes: float) -> float:
    """A client's download, then the rest of its compute (the backward)."""
    p = timing.profiles
    backward = samples * timing.client_flops_per_sample * (1 - timing.forward_share) / p.flops_per_s[client]
    return transfer_s(down_bytes, p.down_bps[client]) + backward


def server_s(timing: Timing, server_samples: int, server_sent: float) -> float:
    """The server's compute and its sending, on its own link."""
    p = timing.profiles
    compute = server_samples * timing.server_flops_per_sample / p.server_flops_per_s
    return compute + transfer_s(server_sent, p.server_link_bps)


def missed_deadline(timing: Timing, arrivals_s: dict[int, float]) -> list[int]:
    """The clients whose upload arrives after the deadline (none without one)."""
    if timing.deadline_s <= 0:
        return []
    return sorted(c for c, t in arrivals_s.items() if t > timing.deadline_s)


@dataclass(frozen=True)
class PhaseTime:
    total_s: float
    busy_s: dict[int, float]  # computing or transferring, per client taking part


def phase_time(phase: Phase, timing: Timing) -> PhaseTime:
    """The SPEC's iteration formula for one phase (module docstring)."""
    ups = {c: upload_s(timing, c, phase.samples.get(c, 0), phase.up.get(c, 0)) for c in phase.clients}
    on_time = [t for c, t in ups.items() if c not in phase.late]
    # Once an upload is late the server waited the whole deadline before it went on.
    arrive = timing.deadline_s if phase.late else max(on_time, default=0.0)
    downs = {
        c: download_s(timing, c, phase.samples.get(c, 0), phase.down.get(c, 0))
        for c in phase.clients
        if c not in phase.late
    }
    total = (
        arrive + server_s(timing, phase.server_samples, phase.server_sent) + max(downs.values(), default=0.0)
    )
    return PhaseTime(total, {c: ups[c] + downs.get(c, 0.0) for c in phase.clients})


@dataclass
class EpochClock:
    """An epoch on the virtual clock: its length and, per client, busy time and participation."""

    sim_s: float
    busy_s: list[float]
    steps: list[int]  # phases the client took part in (its upload used, or its local round)
    late_steps: list[int]  # phases its upload missed the deadline
    staleness_mean: list[float | None] | None = None  # asynchronous schedules only

    @property
    def wait_s(self) -> list[float]:
        """Time neither computing nor transferring: waiting for others, or not taking part."""
        return [self.sim_s - b for b in self.busy_s]


def epoch_clock(phases: list[Phase], timing: Timing, clients: int) -> EpochClock:
    """The phases one after another: each barrier waits for the one before it."""
    clock = EpochClock(0.0, [0.0] * clients, [0] * clients, [0] * clients)
    for phase in phases:
        timed = phase_time(phase, timing)
        clock.sim_s += timed.total_s
        for c, busy in timed.busy_s.items():
            clock.busy_s[c] += busy
            if c in phase.late:
                clock.late_steps[c] += 1
            elif phase.samples.get(c, 0) > 0:
                clock.steps[c] += 1
    return clock
