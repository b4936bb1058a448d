"""Shared pieces of the benchmark scripts: memory sampling and output."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil

from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.results.writer import write_table_atomic

OUT_DIR = Path("results/benchmarks")


def ray_processes_rss_bytes() -> int:
    """Resident memory of every Ray process on this machine (workers, raylet, GCS, agents)."""
    total = 0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::") or "/ray/" in cmdline or "raylet" in cmdline:
            total += proc.info["memory_info"].rss if proc.info["memory_info"] else 0
    return total


def process_tree_pss_bytes() -> int:
    """Proportional set size of this process and all its descendants (an embedded Ray's GCS,
    raylet and workers): shared pages (the object store, libraries) split among the processes
    that map them, so nothing is counted twice, and no other Ray instance on the machine is."""
    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # ended between the listing and the read
    return total


class PeakBytes:
    """Samples `read_bytes()` every `interval_s` in a thread, and once more on exit;
    `.peak_bytes` is the maximum (e.g. of `ray_processes_rss_bytes`)."""

    def __init__(self, read_bytes: Callable[[], int], interval_s: float = 0.5) -> None:
        self.read_bytes, self.interval_s, self.peak_bytes = read_bytes, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.read_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakBytes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.read_bytes())


def write_results(
    rows: list[dict], name: str, title: str, command: str, formats: dict[str, str] | None = None
) -> pd.DataFrame:
    """Write results/benchmarks/<name>.parquet and <name>.md; return the table.

    Floats get 2 decimals in the markdown, except the columns in `formats` (column ->
    format spec, e.g. {"train_loss": ".5f"}); the Parquet file keeps every digit.
    """
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    write_table_atomic(rows, None, OUT_DIR / f"{name}.parquet")
    shown = table.copy()
    for column, spec in (formats or {}).items():
        shown[column] = shown[column].map(lambda v, spec=spec: "" if pd.isna(v) else format(v, spec))
    text = f"# {title}\n\nCommand:\n\n```\n{command}\n```\n\n{markdown_table(shown, decimals=2)}\n"
    (OUT_DIR / f"{name}.md").write_text(text)
    print(text)
    return table
