"""Human-readable summaries of a run (returned as text; the CLI prints them)."""

from __future__ import annotations

import pandas as pd

from sglr_ray.config import RunConfig
from sglr_ray.epochs import EpochResult, RunOutcome

MB = 1e6


def format_epoch_line(config: RunConfig, result: EpochResult) -> str:
    line = (
        f"epoch {result.epoch + 1}/{config.epochs}  loss {result.train_loss:.4f}  "
        f"val {100 * result.val.accuracy:.2f}%"
    )
    if result.test:
        line += f"  test {100 * result.test.accuracy:.2f}%"
    return line + f"  ({result.train_wall_s + result.eval_wall_s:.1f} s)"


def epoch_table(outcome: RunOutcome) -> pd.DataFrame:
    rows = []
    for r in outcome.epochs:
        rows.append({
            "epoch": r.epoch + 1,
            "train_loss": round(r.train_loss, 4),
            "val_acc_%": round(100 * r.val.accuracy, 2),
            "test_acc_%": round(100 * r.test.accuracy, 2) if r.test else None,
            "MB_up": round(sum(r.comm.bytes_up) / MB, 2),
            "MB_down": round(sum(r.comm.bytes_down) / MB, 2),
            "MB_server_sent": round(r.comm.server_sent / MB, 2),
            "train_s": round(r.train_wall_s, 1),
            "eval_s": round(r.eval_wall_s, 1),
        })  # fmt: skip
    return pd.DataFrame(rows)


def per_client_costs(config: RunConfig, outcome: RunOutcome) -> str:
    """Bytes, PFLOPs and energy per client over the whole run, from the recorded run totals."""
    totals, epochs = outcome.run_row, outcome.epochs
    client_flops = totals["client_pflops_mean"] * 1e15
    sent_bits = 8 * sum(sum(e.comm.bytes_up) for e in epochs) / config.clients
    if totals["energy_j"] is None:
        energy = "measured energy: no meter readable"
    else:
        share = client_flops / sum(e.flops.client_total + e.flops.server for e in epochs)
        energy = f"measured {totals['energy_j'] * share:.1f} J"
    return (
        f"per client: {totals['bytes_per_client_mean'] / MB:.1f} MB moved, "
        f"{totals['client_pflops_mean']:.3g} PFLOPs (server {totals['server_pflops']:.3g}), {energy}; "
        f"modelled {client_flops * config.joules_per_flop:.3g} J compute + "
        f"{sent_bits * config.joules_per_bit:.3g} J transmit"
    )


def format_summary(config: RunConfig, outcome: RunOutcome) -> str:
    knobs = f"alpha={config.alpha:g} phi={config.phi:g} phase={config.phase}"
    lines = [
        "",
        f"run {outcome.run_id}: {config.method} ({knobs}), {config.model}, {config.clients} clients "
        f"x {config.samples_per_client} samples of {config.dataset}, executor={config.executor}",
        epoch_table(outcome).to_string(index=False),
        f"final test accuracy: {100 * outcome.final_test_acc:.2f}%  "
        f"[dataset: {config.dataset}]  wall time {outcome.wall_s:.1f} s",
        per_client_costs(config, outcome),
        "results: " + ", ".join(outcome.paths.values()),
    ]
    return "\n".join(lines)
