"""The virtual clock's arithmetic (systems/clock.py) against hand-computed cases, and the device
profiles' checks (systems/devices.py). SPEC section 4, "Systems model"."""

from __future__ import annotations

import pytest

from sglr_ray.settings import ConfigError
from sglr_ray.systems.clock import Phase, Timing, epoch_clock, missed_deadline, phase_time, upload_s
from sglr_ray.systems.devices import DeviceProfiles, load_profiles

# Two clients: client 1 computes twice as fast; both upload 1 MB/s and download 2 MB/s.
PROFILES = DeviceProfiles(
    flops_per_s=(1e9, 2e9), up_bps=(8e6, 8e6), down_bps=(16e6, 16e6), availability=(1.0, 1.0),
    server_flops_per_s=1e12, server_link_bps=8e9,
)  # fmt: skip
TIMING = Timing(PROFILES, client_flops_per_sample=1e6, server_flops_per_sample=2e6, forward_share=0.5)


def psl_step(**changes) -> Phase:
    base = {"samples": {0: 4, 1: 4}, "up": {0: 1000, 1: 2000}, "down": {0: 500, 1: 500},
            "server_samples": 8, "server_sent": 1000}  # fmt: skip
    return Phase(**(base | changes))


def test_a_parallel_step_is_the_slowest_upload_the_server_then_the_slowest_download():
    timed = phase_time(psl_step(), TIMING)
    # up: 0: 4*1e6*0.5/1e9 + 8*1000/8e6 = 0.003; 1: 4*1e6*0.5/2e9 + 8*2000/8e6 = 0.003
    # server: 8*2e6/1e12 + 8*1000/8e9 = 1.7e-5
    # down: 0: 8*500/16e6 + 0.002 = 0.00225; 1: 0.00025 + 0.001 = 0.00125
    assert timed.total_s == pytest.approx(0.003 + 1.7e-5 + 0.00225)
    assert timed.busy_s == pytest.approx({0: 0.00525, 1: 0.00425})


def test_a_broadcast_costs_the_server_link_once():
    unicast = phase_time(psl_step(server_sent=1000), TIMING).total_s
    broadcast = phase_time(psl_step(server_sent=500), TIMING).total_s  # the same 500 B to both, sent once
    assert unicast - broadcast == pytest.approx(8 * 500 / 8e9)


def test_turns_add_up_and_busy_plus_wait_is_the_epoch():
    turns = [Phase({c: 4}, {c: 1000}, {c: 500}, 4, 500) for c in (0, 1)]
    clock = epoch_clock(turns, TIMING, clients=2)
    assert clock.sim_s == pytest.approx(sum(phase_time(p, TIMING).total_s for p in turns))
    assert clock.steps == [1, 1]
    assert [b + w for b, w in zip(clock.busy_s, clock.wait_s, strict=True)] == pytest.approx(
        [clock.sim_s] * 2
    )
    own, other = phase_time(turns[0], TIMING), phase_time(turns[1], TIMING)
    # client 0 waits for the server in its own turn, then through client 1's whole turn
    assert clock.wait_s[0] == pytest.approx(own.total_s - own.busy_s[0] + other.total_s)


def test_a_local_round_is_the_slowest_clients_training_and_transfer():
    whole = Timing(PROFILES, 1e6, 0.0, forward_share=1.0)
    round_ = Phase(samples={0: 100, 1: 100}, up={0: 1000, 1: 1000}, down={0: 1000, 1: 1000}, server_sent=2000)
    # client 0: 100*1e6/1e9 + 8*1000/8e6 = 0.101; down 8*1000/16e6 = 0.0005; the server sends 2000 B
    assert phase_time(round_, whole).total_s == pytest.approx(0.101 + 8 * 2000 / 8e9 + 0.0005)


def test_a_deadline_bounds_the_wait_and_late_clients_receive_nothing():
    timing = Timing(PROFILES, 1e6, 2e6, 0.5, deadline_s=0.0025)
    arrivals = {0: upload_s(timing, 0, 4, 1000), 1: upload_s(timing, 1, 4, 3000)}  # 0.003, 0.004
    assert missed_deadline(timing, arrivals) == [0, 1]
    timing = Timing(PROFILES, 1e6, 2e6, 0.5, deadline_s=0.0035)
    assert missed_deadline(timing, arrivals) == [1]
    phase = psl_step(up={0: 1000, 1: 3000}, down={0: 500}, server_samples=4, server_sent=500, late=(1,))
    timed = phase_time(phase, timing)
    assert timed.total_s == pytest.approx(0.0035 + (4 * 2e6 / 1e12 + 8 * 500 / 8e9) + 0.00225)
    assert timed.busy_s[1] == pytest.approx(0.004)  # its forward and upload, and nothing after
    clock = epoch_clock([phase], timing, clients=2)
    assert (clock.steps, clock.late_steps) == ([1, 0], [0, 1])
    assert missed_deadline(Timing(PROFILES, 1e6, 2e6), arrivals) == []  # no deadline: nobody is late


def defaults(spec: str, clients: int = 3, seed: int = 0) -> DeviceProfiles:
    return load_profiles(spec, clients, seed, 1e10, 1e8, 1e13, 1e9)


def test_homogeneous_is_every_client_at_the_defaults():
    p = defaults("homogeneous")
    assert p.flops_per_s == (1e10,) * 3 and p.up_bps == p.down_bps == (1e8,) * 3 and p.always_available


def test_lognormal_is_seeded_and_spreads_around_the_defaults():
    a, b, other = (
        defaults("lognormal:0.5", 200),
        defaults("lognormal:0.5", 200),
        defaults("lognormal:0.5", 200, 1),
    )
    assert a == b and a != other
    speeds = sorted(a.flops_per_s)
    assert 0.7e10 < speeds[100] < 1.4e10  # the median client is about the default one
    assert speeds[-1] / speeds[0] > 5
    assert defaults("lognormal:0") == defaults("homogeneous")


def write_csv(tmp_path, text: str) -> str:
    path = tmp_path / "devices.csv"
    path.write_text(text)
    return str(path)


def test_a_profile_file_gives_each_client_its_row(tmp_path):
    path = write_csv(tmp_path, "client_id,flops_per_s,up_bps,down_bps,availability\n"
                     "1,2e9,3e6,4e6,0.5\n0,1e9,1e6,2e6,1\n")  # fmt: skip
    p = defaults(path, clients=2)
    assert p.flops_per_s == (1e9, 2e9) and p.up_bps == (1e6, 3e6) and p.availability == (1.0, 0.5)


@pytest.mark.parametrize("text, says", [
    ("client_id,flops_per_s,up_bps,down_bps\n0,1e9,1e6,1e6\n", "no row for clients [1]"),
    ("client_id,flops_per_s,up_bps\n0,1e9,1e6\n1,1e9,1e6\n", "lacks columns ['down_bps']"),
    ("client_id,flops_per_s,up_bps,down_bps\n0,0,1e6,1e6\n1,1e9,1e6,1e6\n", "flops_per_s must be a positive"),
    ("client_id,flops_per_s,up_bps,down_bps\n0,1e9,-1,1e6\n1,1e9,1e6,1e6\n", "up_bps must be a positive"),
    ("client_id,flops_per_s,up_bps,down_bps,availability\n0,1,1,1,0\n1,1,1,1,1\n", "availability"),
])  # fmt: skip
def test_a_bad_profile_file_is_refused_naming_the_flag(tmp_path, text, says):
    with pytest.raises(ConfigError, match="--devices") as refused:
        defaults(write_csv(tmp_path, text), clients=2)
    assert says in str(refused.value)


@pytest.mark.parametrize("spec", ["lognormal:x", "lognormal:-1", "uniform:2", "nofile.csv"])
def test_a_bad_devices_value_is_refused(spec):
    with pytest.raises(ConfigError, match="--devices"):
        defaults(spec)
