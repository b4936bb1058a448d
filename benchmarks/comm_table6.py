"""Table 6 check: measured bytes per epoch of FL, PSL, SFL and SGLR next to the formulas.

Runs one epoch of each method with 10 clients on Fashion-MNIST (AlexNet), reads
the measured bytes back from the Parquet tables, and writes
  <out>/table6.parquet and <out>/table6.md

  .venv/bin/python benchmarks/comm_table6.py --out results/comm-table6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.config import RunConfig
from sglr_ray.execution.driver import run_experiment
from sglr_ray.measure.comm import Sizes, expected_epoch_bytes, paper_epoch_bytes
from sglr_ray.nodes.models import SPLIT_MODELS, smashed_shape, state_nbytes
from sglr_ray.results.writer import write_table_atomic

METHODS = {"fl": {}, "psl": {}, "sfl": {}, "sglr": {"alpha": 0.5, "phi": 0.5}}


def build_table(out: Path, clients: int, samples: int, batch: int) -> pd.DataFrame:
    runs = pd.read_parquet(out / "runs").set_index("method")
    epochs = pd.read_parquet(out / "epochs").set_index("run_id")
    split = SPLIT_MODELS["alexnet"]
    smashed = 4 * int(pd.Series(smashed_shape("alexnet")).prod())
    client_model = state_nbytes(split.build_bottom())
    full_model = client_model + state_nbytes(split.build_top())
    sizes = Sizes(smashed, clients * samples, clients, full_model, client_model, label_bytes=8)
    rows = []
    for method, knobs in METHODS.items():
        phi = knobs.get("phi", 0.0)
        paper = paper_epoch_bytes(method, sizes, phi)
        row = {"method": method, "phi": phi, "paper_formula_MB": paper / 1e6}
        if method in runs.index:
            measured = epochs.loc[runs.loc[method, "run_id"]]
            # FL moves whole models only, so the paper's formula is already exact for it.
            exact = (
                paper
                if method == "fl"
                else expected_epoch_bytes(sizes, batch, phi, True, method == "sfl").on_the_wire
            )
            row |= {
                "measured_up_MB": measured.bytes_up / 1e6,
                "measured_server_sent_MB": measured.bytes_server_sent / 1e6,
                "measured_total_MB": (measured.bytes_up + measured.bytes_server_sent) / 1e6,
                "exact_formula_total_MB": exact / 1e6,
                "measured_down_MB": measured.bytes_down / 1e6,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/comm-table6"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--samples-per-client", type=int, default=1000)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--eval-samples", type=int, default=1000, help="validation and test images")
    args = parser.parse_args(argv)
    for method, knobs in METHODS.items():
        # A rerun replaces this script's own runs (the run id would otherwise refuse new settings).
        for table_dir in ("runs", "epochs", "clients"):
            (args.out / table_dir / f"table6-{method}.parquet").unlink(missing_ok=True)
        config = RunConfig(
            method=method, model="alexnet", dataset=args.dataset, clients=args.clients,
            samples_per_client=args.samples_per_client, epochs=1, val_samples=args.eval_samples,
            test_samples=args.eval_samples,
            out=str(args.out), run_id=f"table6-{method}", **knobs,
        )  # fmt: skip
        run_experiment(config)
    table = build_table(args.out, args.clients, args.samples_per_client, 8)
    write_table_atomic(table.to_dict("records"), None, args.out / "table6.parquet")
    command = "  .venv/bin/python benchmarks/comm_table6.py " + " ".join(argv or sys.argv[1:])
    text = (
        f"# Table 6 check: bytes per epoch, {args.clients} clients x {args.samples_per_client} samples, "
        f"AlexNet, {args.dataset}\n\nCommand:\n\n```\n{command}\n```\n\n"
        + markdown_table(table, decimals=2)
        + "\n"
    )
    (args.out / "table6.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
