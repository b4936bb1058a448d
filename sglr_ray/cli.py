"""Command line: `sglr-ray run` trains one split-learning experiment and records it.

Examples:
  sglr-ray data --download                       # find Fashion-MNIST, fetch it if missing
  sglr-ray run                                   # SGLR, AlexNet, 5 clients, 2 epochs, local
  sglr-ray run --method sfl --clients 10 --epochs 5 --executor ray
  sglr-ray run --config exp.yaml --seed 3        # flags override the file
  sglr-ray sweep --grid grid.yaml --parallel 2   # a grid of runs; completed ones are skipped
  sglr-ray run --resume out/RUN_ID               # carry on a run whose driver died
  sglr-ray run --out 's3://bucket/x?endpoint_override=host:9000&scheme=http'   # results on S3
  sglr-ray run --resume 's3://bucket/x/RUN_ID?endpoint_override=host:9000&scheme=http'
  sglr-ray report results/paper-table4-alexnet-narrow   # report.md with the paper's tables, plots

Results go to --out as Parquet (runs/, epochs/, clients/): pandas.read_parquet("out/epochs").
--out is a directory or a URI pyarrow.fs understands (s3://, gs://, hdfs://); checkpoints go
there too, so a run's --resume works from any node that reaches it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib
import yaml
from tqdm import tqdm

from sglr_ray.config import (
    ConfigError,
    RunConfig,
    check_setting_names,
    config_fields,
    flag,
    setting_type,
)
from sglr_ray.data import DatasetNotFoundError, download_fashion_mnist, find_fashion_mnist
from sglr_ray.datasets import cifar_root
from sglr_ray.epochs import EpochResult, RunOutcome
from sglr_ray.errors import ActorOutOfMemoryError, PlacementError
from sglr_ray.execution.driver import run_experiment
from sglr_ray.execution.interrupt import RunInterrupted, interruption, stop_on_signals
from sglr_ray.execution.sweep import expand_grid, pending, run_sweep
from sglr_ray.methods import METHODS
from sglr_ray.results.storage import Storage, check_writable, join_run, split_run
from sglr_ray.results.summary import format_epoch_line, format_summary
from sglr_ray.results.writer import read_run_settings

METHOD_LIST = "; ".join(f"{name} = {m.summary}" for name, m in METHODS.items())


def setting_help(f: dataclasses.Field) -> str:
    """A flag's help: the setting's declared help, its choices and its default."""
    text = f.metadata["help"] + (f"; built in: {METHOD_LIST}" if f.name == "method" else "")
    if f.metadata["choices"] and f.name not in ("model", "dataset"):
        return f"{text} (default: {f.default!r})"
    choices = f" (one of: {', '.join(f.metadata['choices'])})" if f.metadata["choices"] else ""
    default = "method default" if f.default is None else repr(f.default)
    return f"{text}{choices} (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglr-ray", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="train one experiment", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    data = commands.add_parser("data", help="find a built-in dataset, or download it with --download")
    data.add_argument("--download", action="store_true", help="fetch it with torchvision when not found")
    data.add_argument("--dataset", choices=("fashion-mnist", "cifar10", "cifar100"), default="fashion-mnist")
    data.add_argument("--data-dir", default="", help="cifar10/cifar100: where to look (and download to)")
    sweep = commands.add_parser("sweep", help="run a grid of experiments, skipping completed ones")
    sweep.add_argument("--grid", type=Path, required=True, help="YAML or TOML file with `base` and `grid`")
    sweep.add_argument("--parallel", type=int, default=1, help="runs at once, each in its own process")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    sweep.add_argument(
        "--backend", choices=("local", "ray"), default="local",
        help="local: runs in this machine's processes (--parallel); ray: each run a Ray task on the "
        "cluster RAY_ADDRESS names (or an embedded Ray), with retries and a status table",
    )  # fmt: skip
    sweep.add_argument(
        "--cpus-per-run", type=float, default=1.0,
        help="--backend ray: CPUs each run reserves in all, its task and its actors together (one "
        "placement group); as many runs go at once as the cluster holds",
    )  # fmt: skip
    sweep.add_argument(
        "--retries", type=int, default=2,
        help="--backend ray: resubmissions of a run whose task was lost (process or node died); a run "
        "that raises an error is not retried",
    )  # fmt: skip
    report = commands.add_parser("report", help="write report.md and plots/ for a results directory")
    report.add_argument("out", type=Path, help="results directory (with runs/, epochs/, clients/)")
    report.add_argument("--path", type=Path, help="where to write the report (default: OUT/report.md)")
    report.add_argument(
        "--include-superseded", action="store_true",
        help="count runs that newer runs of today's defaults supersede (left out by default; the "
        "report's provenance section lists them)",
    )  # fmt: skip
    report.add_argument(
        "--baseline", type=Path, action="append", default=[], metavar="DIR",
        help="a results directory whose cells OUT's runs rerun with a setting changed (controls): the "
        "report pairs each control run with the baseline's run of the same cell and seed (repeatable)",
    )  # fmt: skip
    run.add_argument("--config", type=Path, help="YAML or TOML file of run settings; flags override it")
    run.add_argument(
        "--resume", metavar="OUT/RUN_ID",
        help="carry on the run recorded as OUT/runs/RUN_ID.parquet from its last checkpoint, "
        "with its own settings; for a URI the run id ends the path, before the query: "
        "s3://bucket/x/RUN_ID?endpoint_override=...",
    )  # fmt: skip
    run.add_argument("-v", "--verbose", action="store_true", help="log what the executors do")
    for f in config_fields():
        kind = setting_type(f)
        if kind is bool:
            run.add_argument(flag(f.name), action="store_true", default=None, help=setting_help(f))
        else:
            metavar = f.name.upper()
            run.add_argument(flag(f.name), type=kind, default=None, metavar=metavar, help=setting_help(f))
    return parser


def read_mapping(path: Path, flag: str) -> dict[str, Any]:
    """A YAML or TOML file's top-level mapping."""
    try:
        text = path.read_text()
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, tomllib.TOMLDecodeError, yaml.YAMLError) as ex:
        raise ConfigError(f"{flag} {str(path)!r} could not be read: {ex}") from ex
    if not isinstance(raw, dict):
        raise ConfigError(f"{flag} {str(path)!r} must hold a mapping of settings")
    return raw


def load_config_file(path: Path) -> dict[str, Any]:
    """Read run settings from YAML or TOML; keys may use '-' or '_'."""
    return check_setting_names(read_mapping(path, "--config"), f"--config {str(path)!r}")


def run_grid(path: Path, parallel: int, dry_run: bool, args: argparse.Namespace | None = None) -> int:
    try:
        raw = read_mapping(path, "--grid")
        extra = sorted(set(raw) - {"base", "grid"})
        if extra or "grid" not in raw:
            raise ConfigError(
                f"--grid {str(path)!r} needs a `grid` mapping or list of them (and optional `base`), "
                f"got {extra}"
            )
        base = check_setting_names(raw.get("base") or {}, f"--grid {str(path)!r} base")
        # `grid` is one mapping, or a list of them whose expansions are joined (a method
        # with knobs of its own beside methods without); runs go seed by seed.
        grids = raw["grid"] if isinstance(raw["grid"], list) else [raw["grid"]]
        configs: dict[str, RunConfig] = {}
        for grid in grids:
            if not isinstance(grid, dict):
                raise ConfigError(f"--grid {str(path)!r}: each grid must be a mapping, got {grid!r}")
            grid = check_setting_names(grid, f"--grid {str(path)!r} grid")
            configs |= {c.run_id: c for c in expand_grid(base, grid)}
        configs = sorted(configs.values(), key=lambda c: c.seed)
        for out in {c.out for c in configs}:
            check_writable(out)
    except ConfigError as ex:
        print(f"sglr-ray: error: {ex}", file=sys.stderr)
        return 2
    todo = {c.run_id for c in pending(configs)}
    stores = {out: Storage(out) for out in {c.out for c in configs}}
    for config in configs:
        where = stores[config.out].display(f"runs/{config.run_id}.parquet")
        print(f"{'todo' if config.run_id in todo else 'done'}  {where}")
    if dry_run:
        return 0
    if args is not None and args.backend == "ray":
        return run_grid_on_ray(configs, args)
    run_sweep(configs, parallel, on_done=lambda run_id: print(f"completed {run_id}", flush=True))
    return 0


def run_grid_on_ray(configs: list[RunConfig], args: argparse.Namespace) -> int:
    """The grid as Ray tasks: 0 when every run completed, 1 naming the runs that failed,
    2 when a run cannot fit the cluster (nothing started)."""
    import time

    from sglr_ray.execution.ray_sweep import print_status, run_sweep_on_ray

    started = time.monotonic()
    try:
        outcome = run_sweep_on_ray(
            configs, cpus_per_run=args.cpus_per_run, retries=args.retries,
            on_status=lambda table: print_status(table, started),
        )  # fmt: skip
    except PlacementError as ex:
        print(f"sglr-ray: error: {ex}", file=sys.stderr)
        return 2
    print(f"completed {len(outcome.completed)} runs on Ray", flush=True)
    if not outcome.failed:
        return 0
    failed = "; ".join(f"{run_id}: {why}" for run_id, why in outcome.failed.items())
    print(f"sglr-ray: error: {len(outcome.failed)} runs failed: {failed}", file=sys.stderr)
    return 1


def resumed_config(args: argparse.Namespace) -> RunConfig:
    """The recorded configuration of the run named by --resume OUT/RUN_ID."""
    given = [f"--{f.name.replace('_', '-')}" for f in config_fields() if getattr(args, f.name) is not None]
    if args.config or given:
        raise ConfigError(f"--resume uses the run's recorded settings; drop {', '.join(given) or '--config'}")
    out, run_id = resume_target(args.resume)
    settings = check_setting_names(read_run_settings(out, run_id), f"--resume {args.resume!r}: the run")
    return RunConfig(**settings | {"out": out, "run_id": run_id})


def resume_target(address: str) -> tuple[str, str]:
    """--resume OUT/RUN_ID as (out, run_id): a directory and a name, or for a URI the path's
    last segment as the run id with the query kept on out (s3://b/x/RUN?q -> s3://b/x?q, RUN)."""
    try:
        return split_run(address)
    except ValueError as ex:
        raise ConfigError(f"--resume {ex}") from ex


def config_from_args(args: argparse.Namespace) -> RunConfig:
    settings = load_config_file(args.config) if args.config else {}
    for f in config_fields():
        value = getattr(args, f.name)
        if value is not None:
            settings[f.name] = value
    return RunConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals():  # the first SIGINT/SIGTERM stops the command; a second exits at once
            return run_command(args)
    except KeyboardInterrupt as stopped:
        stop = interruption(stopped)
        print(interrupted_message(args.command, stop), file=sys.stderr)
        return stop.exit_code


def entry() -> None:
    """The console script and `python -m sglr_ray`: `main`, then exit without the interpreter's
    teardown.

    At teardown pyarrow's native thread pools can abort the process after all the work is
    done ("terminate called without an active exception", exit 134; apache/arrow#34314):
    one `sweep --dry-run` in six did here. So the command shuts down what it started (an
    embedded Ray), flushes logs and streams, and leaves with its own exit code. Tables need
    nothing more: each is written to a temporary file and renamed into place.
    """
    try:
        code = main()
    except SystemExit as done:  # argparse: --help, or a usage error
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def interrupted_message(command: str, stop: RunInterrupted) -> str:
    """The one line printed when a stop signal ends `command`: what stopped, and how to carry on."""
    head = f"sglr-ray: {command} interrupted ({stop.signal_name})"
    if command == "sweep":
        return f"{head}; run it again to carry on: completed runs are skipped, interrupted ones resume"
    if command != "run":
        return head
    if stop.run_id is None or not Storage(stop.out).exists(f"runs/{stop.run_id}.parquet"):
        return f"{head} before the run was recorded; nothing to resume"
    done = "" if stop.epochs_done is None else f" after {stop.epochs_done} epochs"
    address = shlex.quote(join_run(stop.out, stop.run_id))  # a URI's ? and & are the shell's otherwise
    return f"{head}: {stop.run_id}{done}; carry on with: sglr-ray run --resume {address}"


def run_command(args: argparse.Namespace) -> int:
    if args.command == "data":
        if args.dataset != "fashion-mnist":
            return locate_cifar(args.dataset, args.download, args.data_dir)
        return locate_data(args.download)
    if args.command == "sweep":
        return run_grid(args.grid, args.parallel, args.dry_run, args)
    if args.command == "report":
        return write_report_for(args.out, args.path, args.include_superseded, args.baseline)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        config = resumed_config(args) if args.resume else config_from_args(args)
        outcome = run_with_progress(config, resume=args.resume is not None)
    except (ConfigError, DatasetNotFoundError, PlacementError, ActorOutOfMemoryError) as ex:
        print(f"sglr-ray: error: {ex}", file=sys.stderr)
        return 2
    print(format_summary(config, outcome))
    return 0


def write_report_for(
    out: Path, path: Path | None, include_superseded: bool = False, baselines: Sequence[Path] = ()
) -> int:
    from sglr_ray.analysis.report import write_report  # matplotlib and pandas analysis: loaded only here

    for directory, name in [(out, "OUT"), *((b, "--baseline") for b in baselines)]:
        if not (directory / "runs").is_dir():
            print(
                f"sglr-ray: error: {name} {str(directory)!r} holds no runs/ directory of results",
                file=sys.stderr,
            )
            return 2
    print(f"report: {write_report(out, path, include_superseded, baselines)}")
    return 0


def locate_data(download: bool) -> int:
    try:
        print(f"Fashion-MNIST: {find_fashion_mnist()}")
    except DatasetNotFoundError as ex:
        if not download:
            print(f"sglr-ray: error: {ex}", file=sys.stderr)
            return 2
        print(f"Fashion-MNIST: downloaded to {download_fashion_mnist()}")
    return 0


def locate_cifar(name: str, download: bool, data_dir: str) -> int:
    from sglr_ray.datasets import download_cifar, load_cifar

    try:
        load_cifar(name, data_dir)
        print(f"{name}: {cifar_root(data_dir)}")
    except DatasetNotFoundError as ex:
        if not download:
            print(f"sglr-ray: error: {ex}", file=sys.stderr)
            return 2
        print(f"{name}: downloaded to {download_cifar(name, data_dir)}")
    return 0


def run_with_progress(config: RunConfig, resume: bool = False) -> RunOutcome:
    """Run with a progress bar per epoch (on stderr, when it is a terminal) and a line per epoch."""
    bars: dict[int, tqdm] = {}

    def progress(epoch: int, steps: int, loss: float) -> None:
        if epoch not in bars:
            bars[epoch] = tqdm(
                total=config.iterations_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="step", leave=False, disable=None, file=sys.stderr,
            )  # fmt: skip
        bars[epoch].update(steps - bars[epoch].n)
        bars[epoch].set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_epoch(result: EpochResult) -> None:
        if result.epoch in bars:
            bars.pop(result.epoch).close()
        print(format_epoch_line(config, result), flush=True)

    try:
        return run_experiment(config, progress, on_epoch, resume=resume)
    finally:
        for bar in bars.values():  # an interrupted epoch's bar
            bar.close()


if __name__ == "__main__":
    entry()
