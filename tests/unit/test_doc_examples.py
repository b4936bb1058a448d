"""Every example in README.md and docs/**/*.md runs, so none can go stale.

Conventions (docs/development.md says the same for authors):
- ```bash blocks run line by line (a trailing backslash continues a line). A line starting with
  `sglr-ray` runs in this process through `cli.main`, the function the console script calls, so the
  synthetic dataset is drawn once; `sglr-ray run` is shrunk to a small setting (`shrink`). Other
  lines run in bash with this interpreter's bin directory first on the PATH.
- ```python blocks run in one namespace per page, in a fresh directory holding `out/quickstart`
  (a small run of the Makefile's RUN_ARGS) and links to the repository's examples/, cluster/
  and results/.
- `<!-- file: NAME -->` before a block writes it to NAME instead of running it.
- `<!-- skip: reason -->` before a block leaves it out; the reason is required.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sglr_ray import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNABLE = {"bash", "sh", "python"}
LINKED = ("examples", "cluster", "results")
# `sglr-ray run` in the docs, shrunk: values capped (0 = "all" counts as over the cap), added where
# absent; forced settings replace what the page says.
CAPS = {"--epochs": 2, "--samples-per-client": 32, "--clients": 4, "--val-samples": 100,
        "--test-samples": 100, "--leakage-aux-samples": 100}  # fmt: skip
FORCED = {"--dataset": "synthetic", "--executor": "local", "--torch-threads": "1"}
SHELL_SYNTAX = {"|", "||", "&&", ";", ">", ">>", "<", "&"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None = None
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with the marker comment on the line before each."""
    blocks, lines = [], page.read_text().splitlines()
    number = 0
    while number < len(lines):
        opening = re.match(r"^(\s*)```(\S*)", lines[number])
        if not opening:
            number += 1
            continue
        indent, lang = len(opening.group(1)), opening.group(2)
        end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
        code = "\n".join(line[indent:] for line in lines[number + 1 : end]) + "\n"
        before = next((lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        marker = re.fullmatch(r"<!-- (skip|file):\s*(.*?)\s*-->", before)
        kind, value = marker.groups() if marker else (None, None)
        skip, file = (value, None) if kind == "skip" else (None, value)
        blocks.append(Block(page, number + 1, lang, code, skip, file))
        number = end + 1
    return blocks


def shell_lines(code: str) -> list[str]:
    """Commands of a bash block: continuation lines joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def shrink(argv: list[str]) -> list[str]:
    """`run` arguments cut to a small setting (see CAPS and FORCED); other commands unchanged."""
    if argv[:1] != ["run"] or {"--resume", "--help", "-h"} & set(argv):
        return argv
    args = [part for arg in argv[1:] for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
    for flag, cap in CAPS.items():
        if flag in args:
            at = args.index(flag) + 1
            value = int(args[at])
            args[at] = str(cap if value == 0 else min(value, cap))
        else:
            args += [flag, str(cap)]
    for flag, value in FORCED.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return ["run", *args]


def writes_results(argv: list[str]) -> bool:
    """Whether a command would write under results/ (a report writes to --path where given)."""
    if "--dry-run" in argv:
        return False
    if argv[0] == "report" and "--path" in argv:
        return argv[argv.index("--path") + 1].startswith("results/")
    return any(word.startswith("results/") for word in argv)


def run_line(line: str, cwd: Path, env: dict[str, str]) -> None:
    words = shlex.split(line, comments=True)
    if words[:1] == ["sglr-ray"] and not SHELL_SYNTAX & set(words):
        argv = shrink(words[1:])
        assert not writes_results(argv), f"a docs example must not write into the repository: {line}"
        try:
            code = cli.main(argv)
        except SystemExit as ex:  # --help
            code = ex.code
        assert code == 0, f"`{line}` (run as sglr-ray {shlex.join(argv)}) exited with {code}"
        return
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", line],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"`{line}` exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"


def makefile_run_args() -> list[str]:
    """RUN_ARGS of the Makefile: what `make run` passes to `sglr-ray run`."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())
    return shlex.split(re.search(r"^RUN_ARGS \?= (.*)$", text, re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """`make run`'s experiment, shrunk: the out/quickstart that README's pandas example reads."""
    home = tmp_path_factory.mktemp("quickstart")
    here = Path.cwd()
    os.chdir(home)
    try:
        assert cli.main(shrink(["run", *makefile_run_args()])) == 0
    finally:
        os.chdir(here)
    return home / "out" / "quickstart"


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_markers_are_complete():
    for block in (b for page in PAGES for b in read_blocks(page)):
        assert block.skip != "", f"{block.where}: a skip marker needs a reason"
        if block.file:
            assert block.lang not in RUNNABLE, f"{block.where}: a file marker goes on a data block"


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make run" in quick and "make test" in quick


def runnable(page: Path) -> bool:
    return any(b.lang in RUNNABLE and not b.skip for b in read_blocks(page))


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=page_id)
def test_page_examples_run(page, quickstart, tmp_path, monkeypatch):
    shutil.copytree(quickstart, tmp_path / "out" / "quickstart")
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in read_blocks(page):
        if block.file:
            (tmp_path / block.file).write_text(block.code)
        elif block.skip or block.lang not in RUNNABLE:
            continue
        elif block.lang == "python":
            exec(compile(block.code, block.where, "exec"), namespace)
            ran += 1
        else:
            for line in shell_lines(block.code):
                run_line(line, tmp_path, env)
            ran += 1
    assert ran > 0


def test_shrink_caps_and_forces():
    argv = shrink(["run", "--clients", "20", "--epochs=20", "--test-samples", "0", "--executor", "ray"])
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags["--clients"] == "4" and flags["--epochs"] == "2" and flags["--test-samples"] == "100"
    assert flags["--executor"] == "local" and flags["--dataset"] == "synthetic"
    assert shrink(["run", "--resume", "out/x"]) == ["run", "--resume", "out/x"]


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", "results/README.md"])
def test_relative_links_resolve(page):
    """`make docs --strict` checks the site's links; these pages live outside it (the studies'
    READMEs are reached from results/README.md and checked with it)."""
    studies = sorted((ROOT / "results").glob("*/README.md")) if page.startswith("results") else []
    pages = [ROOT / page, *studies]
    for source in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", source.read_text()):
            assert (source.parent / target).exists(), f"{source.relative_to(ROOT)} links to missing {target}"
