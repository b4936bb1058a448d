"""Calls across actors name methods by reference (SplitShard.forward_batch), never by string.

A check that reads the source like a linter: every `ex.call(target, X.name, ...)` in the
package names a real method of ClientShard or Server, and no call passes a string.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sglr_ray.nodes.client import ClientShard
from sglr_ray.nodes.local_shard import LocalShard
from sglr_ray.nodes.server import Server
from sglr_ray.nodes.split_shard import SplitShard

PACKAGE = Path(__file__).parents[2] / "sglr_ray"
CLASSES = {"ClientShard": ClientShard, "SplitShard": SplitShard, "LocalShard": LocalShard, "Server": Server}


def call_sites() -> list[tuple[str, int, ast.expr]]:
    sites = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "call" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "ex"):  # fmt: skip
                sites.append((path.name, node.lineno, node.args[1]))
    return sites


def test_there_are_call_sites_to_check():
    assert len(call_sites()) > 15


@pytest.mark.parametrize(
    "where, line, method", call_sites(), ids=lambda v: str(v) if isinstance(v, int) else None
)
def test_every_cross_actor_call_names_a_real_method(where, line, method):
    assert not isinstance(method, ast.Constant), f"{where}:{line} names a method by string"
    if isinstance(method, ast.Name):  # a function of its own module, by reference (call_on)
        return
    assert isinstance(method, ast.Attribute) and isinstance(method.value, ast.Name), f"{where}:{line}"
    cls = CLASSES.get(method.value.id)
    assert cls is not None, f"{where}:{line}: {method.value.id} is not a shard class or Server"
    assert callable(getattr(cls, method.attr, None)), f"{where}:{line}: {cls.__name__} has no {method.attr}"
