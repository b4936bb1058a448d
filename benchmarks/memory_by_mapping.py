"""Resident memory of a command's process tree, per process and per mapped file.

Starts the command, waits `--after-s` seconds, then reads /proc/<pid>/smaps of
the command and every descendant (Ray's daemons and workers included): each
process's RSS, the part of it backed by files, and the files holding the most
resident pages (torch's and CUDA's libraries, Triton, Ray's object store). It
answers "which libraries does this process page in", which a tree's RSS total
cannot. Writes results/benchmarks/<--name>.md and .parquet.

  .venv/bin/python -m benchmarks.memory_by_mapping --after-s 30 --name memory-fl-ray-100x500 -- \\
      .venv/bin/python -m sglr_ray run --method fl --model alexnet --clients 100 \\
      --samples-per-client 500 --epochs 1 --val-samples 200 --test-samples 200 \\
      --executor ray --out /tmp/memory-probe
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time

import psutil

from benchmarks.common import write_results

MIB = 2**20


def rss_by_mapping(pid: int) -> collections.Counter:
    """Resident bytes per mapping name (a file path, or [heap], [anon], ...) of one process."""
    resident: collections.Counter = collections.Counter()
    mapping = "[anon]"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
                mapping = fields[5] if len(fields) > 5 else "[anon]"
            elif fields and fields[0] == "Rss:":
                resident[mapping] += int(fields[1]) * 1024
    return resident


def describe(proc: psutil.Process, top: int) -> list[dict]:
    """A row for the process (RSS, file-backed RSS), then one for each of its `top` largest files."""
    resident = rss_by_mapping(proc.pid)
    files = {name: n for name, n in resident.items() if name.startswith("/")}
    rows = [{
        "pid": proc.pid, "process": " ".join(proc.cmdline())[:60], "rss_MiB": sum(resident.values()) / MIB,
        "file_MiB": sum(files.values()) / MIB, "mapping": "", "mapping_MiB": None,
    }]  # fmt: skip
    for path, n in sorted(files.items(), key=lambda item: -item[1])[:top]:
        short = path.split("site-packages/")[-1]
        rows.append({"pid": proc.pid, "process": "", "rss_MiB": None, "file_MiB": None,
                     "mapping": short, "mapping_MiB": n / MIB})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--after-s", type=float, default=30.0, help="seconds to wait before reading")
    parser.add_argument("--top", type=int, default=8, help="files listed per process")
    parser.add_argument("--min-mib", type=float, default=100.0, help="skip processes with less RSS")
    parser.add_argument("--name", default="memory_by_mapping", help="results/benchmarks/<name>.md")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(args.after_s)
        if child.poll() is not None:
            print(f"the command ended (exit {child.returncode}) within {args.after_s} s", file=sys.stderr)
            return 1
        rows = []
        root = psutil.Process(child.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                if proc.memory_info().rss >= args.min_mib * MIB:
                    rows += describe(proc, args.top)
            except (psutil.Error, OSError):  # ended between listing and reading
                continue
    finally:
        child.terminate()
        child.wait()
    title = f"Resident memory by process and mapped file, {args.after_s:.0f} s into the command"
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    write_results(rows, args.name, title, "  .venv/bin/python -m benchmarks.memory_by_mapping " + shown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
