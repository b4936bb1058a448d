"""The learning methods: one module per method family, a registry, the split-layer rules.

`METHODS` maps a name to its `Method` declaration; help text, run names,
report labels and FLOPs accounting read it, so nothing else lists methods.
A user's own method is named as `path/to/file.py:attribute` (see
examples/custom_method.py) and loaded by `get_method`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from sglr_ray.methods import asl, baselines, cyclesl, gpsl, lsl, sfl, sflv1, sglr, usl
from sglr_ray.methods.base import Delivery, Method, OwnGradients, SplitRule

__all__ = [
    "METHODS", "Delivery", "Method", "MethodNotFoundError", "OwnGradients", "SplitRule", "get_method",
    "method_file",
]  # fmt: skip

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        baselines.cl, baselines.fl, baselines.ssl,
        sglr.psl, sglr.slr, sglr.sgl, sglr.sglr, sfl.sfl,
        sflv1.sflv1, cyclesl.cyclesl, gpsl.gpsl, usl.usl, lsl.lsl, asl.asl,
    )
}  # fmt: skip


class MethodNotFoundError(ValueError):
    """--method names neither a built-in method nor a loadable FILE.py:NAME."""


def get_method(spec: str) -> Method:
    """The Method named `spec`: a built-in name, or `FILE.py:NAME` for a user's own."""
    if spec in METHODS:
        return METHODS[spec]
    if ":" not in spec:
        raise MethodNotFoundError(
            f"--method {spec!r} is unknown; choose one of: {', '.join(METHODS)}, or FILE.py:NAME"
        )
    path, _, attribute = spec.rpartition(":")
    module = _load_module(Path(path), spec)
    method = getattr(module, attribute, None)
    if not isinstance(method, Method):
        raise MethodNotFoundError(f"--method {spec!r}: {path} defines no Method named {attribute!r}")
    return method


def method_file(spec: str) -> Path | None:
    """The file of a user's method named `FILE.py:NAME`, if it is one and exists here."""
    if spec in METHODS or ":" not in spec:
        return None
    path = Path(spec.rpartition(":")[0])
    return path.resolve() if path.is_file() else None


def _load_module(path: Path, spec: str):
    """Import a method file once per process, by its stem, from the path or from sys.path.

    On Ray the file reaches the actors through the runtime environment
    (py_modules), which puts it on their sys.path under its stem.
    """
    name = path.stem
    if name in sys.modules:
        return sys.modules[name]
    if path.is_file():
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module
        loader.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(name)
    except ImportError as ex:
        raise MethodNotFoundError(f"--method {spec!r}: no file {str(path)!r}") from ex
