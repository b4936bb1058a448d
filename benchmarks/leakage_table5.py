"""Table 5 analogue: information leakage against SplitAvg's phi, 6 clients.

For each phi, trains SGLR (alpha 0.5) and then runs the server-side decoder
attack on client 0 (see sglr_ray/leakage.py). Writes
  <out>/table5.parquet and <out>/table5.md (with the paper's figures beside ours)

  .venv/bin/python benchmarks/leakage_table5.py --epochs 6 --seeds 0 1 --out results/leakage-table5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.config import RunConfig
from sglr_ray.execution.driver import run_experiment
from sglr_ray.results.writer import write_table_atomic

PHIS = [0.0, 0.25, 0.5, 0.75, 1.0]
PAPER_LOSS = {0.0: 0.2153, 0.25: 0.2142, 0.5: 0.2166, 0.75: 0.2296, 1.0: 0.2759}  # SPEC section 4


def summarise(out: Path) -> pd.DataFrame:
    """Mean and standard deviation over seeds, one row per phi, with the paper's loss beside."""
    leakage = pd.read_parquet(out / "leakage")
    runs = pd.read_parquet(out / "runs")[["run_id", "seed", "final_test_acc", "wall_s"]]
    metrics = ["mse", "psnr", "ssim", "distance_correlation", "final_test_acc", "wall_s"]
    grouped = leakage.merge(runs, on="run_id").groupby("phi")
    table = grouped[metrics].mean()
    for metric in ["mse", "ssim", "distance_correlation"]:
        table[f"{metric}_std"] = grouped[metric].std()
    table["seeds"] = grouped.seed.nunique()
    table["paper_loss"] = table.index.map(PAPER_LOSS)
    columns = ["mse", "mse_std", "paper_loss", "psnr", "ssim", "ssim_std", "distance_correlation",
               "distance_correlation_std", "final_test_acc", "wall_s", "seeds"]  # fmt: skip
    return table[columns].reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/leakage-table5"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for phi in PHIS:
            run_id = f"table5-phi{phi:g}-s{seed}"
            if (args.out / "leakage" / f"{run_id}.parquet").exists():
                continue  # done by an earlier invocation
            config = RunConfig(
                method="sglr", alpha=0.5, phi=phi, model=args.model, dataset=args.dataset, clients=6,
                epochs=args.epochs, seed=seed, val_samples=1000, test_samples=1000, leakage=True,
                out=str(args.out), run_id=run_id,
            )  # fmt: skip
            run_experiment(config)
    table = summarise(args.out)
    write_table_atomic(table.to_dict("records"), None, args.out / "table5.parquet")
    command = "  .venv/bin/python benchmarks/leakage_table5.py " + " ".join(argv or sys.argv[1:])
    text = (
        f"# Table 5 analogue: leakage vs phi, 6 clients, {args.model}, {args.epochs} epochs, "
        f"{args.dataset}\n\n"
        f"Command:\n\n```\n{command}\n```\n\n" + markdown_table(table, decimals=4) + "\n"
    )
    (args.out / "table5.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
