"""Callables a user names on the command line: `FILE.py:NAME` or `package.module:NAME`.

`--model` and `--dataset` take either form (and a built-in name, which stands
for a `package.module:NAME` inside sglr_ray). A file is imported once per
process under its stem; on Ray it reaches the actors through the runtime
environment (py_modules), which puts it on their sys.path under that stem, so
where the path does not exist the stem is imported instead.

A declaration outside sglr_ray enters a run's identity with a hash of its
source file (`identity_name`): an edited file is a different run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


class DeclarationError(ValueError):
    """A FILE.py:NAME or package.module:NAME that cannot be loaded; the message names the setting."""


def split_spec(spec: str) -> tuple[str, str]:
    """(FILE.py or package.module, NAME)."""
    where, _, name = spec.rpartition(":")
    return where, name


def is_file_spec(spec: str) -> bool:
    return split_spec(spec)[0].endswith(".py")


def load(spec: str, setting: str) -> Any:
    """The attribute NAME of the file or module `spec` names; a DeclarationError naming `setting`
    (a flag such as --model) when the file, the module or the attribute is missing."""
    where, name = split_spec(spec)
    if not where or not name:
        raise DeclarationError(f"{setting} {spec!r}: expected FILE.py:NAME or package.module:NAME")
    module = (
        _load_file(Path(where), spec, setting) if where.endswith(".py") else _import(where, spec, setting)
    )
    if not hasattr(module, name):
        raise DeclarationError(f"{setting} {spec!r}: {where} defines no {name!r}")
    return getattr(module, name)


def _load_file(path: Path, spec: str, setting: str) -> ModuleType:
    name = path.stem
    loaded = sys.modules.get(name)
    if path.is_file():
        # The same stem from another path (or an edited copy) must not be taken for it.
        if loaded is not None and getattr(loaded, "__file__", None) == str(path.resolve()):
            return loaded
        loader = importlib.util.spec_from_file_location(name, path.resolve())
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as ex:
            del sys.modules[name]
            raise DeclarationError(f"{setting} {spec!r}: importing {path} failed: {ex}") from ex
        return module
    if loaded is not None:
        return loaded
    try:  # a Ray actor: the file came through py_modules, under its stem
        return importlib.import_module(name)
    except ImportError as ex:
        raise DeclarationError(f"{setting} {spec!r}: no file {str(path)!r}") from ex


def _import(module: str, spec: str, setting: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as ex:
        raise DeclarationError(f"{setting} {spec!r}: no module {module!r} ({ex})") from ex


def shipped_file(spec: str) -> Path | None:
    """The file an actor needs to load `spec`: a FILE.py that exists here, else None (a module
    is expected to be installed on the cluster, as sglr_ray itself is)."""
    if not is_file_spec(spec):
        return None
    path = Path(split_spec(spec)[0])
    return path.resolve() if path.is_file() else None


def source_file(spec: str) -> Path | None:
    """The source file behind `spec`, for its hash: FILE.py, or the module's file."""
    where, _ = split_spec(spec)
    if where.endswith(".py"):
        return Path(where) if Path(where).is_file() else None
    found = importlib.util.find_spec(where)
    return Path(found.origin) if found is not None and found.origin else None


@functools.cache
def _digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


def identity_name(spec: str) -> str:
    """How `spec` enters a run's identity: `file.py:NAME@<8 hex digits of the file's SHA-256>`
    (the file's name, not its path, so the same file run from elsewhere is the same run)."""
    path = source_file(spec) if ":" in spec else None
    if path is None:
        return spec
    stat = path.stat()
    where, name = split_spec(spec)
    label = path.name if where.endswith(".py") else where
    return f"{label}:{name}@{_digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)}"
