"""Split models: a model declaration, cut into what the clients and the server hold.

A model is declared as `NAME(input_shape, num_classes)` returning an
nn.Sequential (cut between its top-level children) or a (bottom, top) pair of
modules; the built-ins (sglr_ray/zoo/) are declared that way too. `--model`
names one (alexnet, resnet16, FILE.py:NAME or package.module:NAME) and `--cut`
says where it is cut: K puts the first K children on the client; U-shaped
methods take K1,K2 (head = children before K1, middle, tail = children from K2).

Seeds: the bottom's parameters are drawn from the run's seed, the top's from
seed + 1, each as if its part were built first (`build_part`), so every client
starts from the same weights, CL's whole model starts from the very weights
the split methods start from, and the built-in models at their default cut
start from the weights the original bottom/top pairs did.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from sglr_ray.declared import DeclarationError, load
from sglr_ray.zoo import BUILTIN_MODELS, Block
from sglr_ray.zoo.resnet16 import BasicBlock  # noqa: F401  (nodes/grouped.py groups its copies)

INPUT_SHAPE = (1, 32, 32)  # Fashion-MNIST as the models see it (data.py pads 28x28 by 2)
NUM_CLASSES = 10


class ModelError(ValueError):
    """A model declaration or cut that cannot work; the message names the setting (--model, --cut)."""


def declaration(model: str) -> Callable[..., object]:
    """The callable `--model` names: a built-in name, FILE.py:NAME or package.module:NAME."""
    if model in BUILTIN_MODELS:
        return load(BUILTIN_MODELS[model], "--model")
    if ":" not in model:
        raise ModelError(
            f"--model {model!r} is unknown; choose one of: {', '.join(BUILTIN_MODELS)}, "
            "FILE.py:NAME or package.module:NAME"
        )
    try:
        found = load(model, "--model")
    except DeclarationError as ex:
        raise ModelError(str(ex)) from ex
    if not callable(found):
        raise ModelError(f"--model {model!r}: {found!r} is not callable as NAME(input_shape, num_classes)")
    return found


def model_children(model: str, input_shape: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    """The declaration's top-level children, freshly built from the global RNG."""
    return _children_of(model, _call(model, input_shape, num_classes))


def _call(model: str, input_shape: tuple[int, ...], num_classes: int) -> object:
    try:
        return declaration(model)(tuple(input_shape), num_classes)
    except ModelError:
        raise
    except Exception as ex:  # the user's code: its error, with the arguments it was given
        raise ModelError(f"--model {model!r}: NAME({tuple(input_shape)}, {num_classes}) failed: {ex}") from ex


def _children_of(model: str, built: object) -> list[nn.Module]:
    """A Sequential's children; a (bottom, top) pair counts as the bottom followed by the top's
    children (the top itself if it is not a Sequential)."""
    if isinstance(built, nn.Sequential):
        return list(built.children())
    if isinstance(built, tuple | list) and len(built) == 2 and all(isinstance(m, nn.Module) for m in built):
        bottom, top = built
        return [bottom, *(top.children() if isinstance(top, nn.Sequential) else [top])]
    raise ModelError(
        f"--model {model!r} returned {type(built).__name__}; expected an nn.Sequential (to be cut) "
        "or a (bottom, top) pair of nn.Modules"
    )


@functools.cache
def model_layout(model: str, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, bool, int]:
    """(number of children, whether declared as a (bottom, top) pair, default cut)."""
    with torch.random.fork_rng(devices=[]):
        built = _call(model, input_shape, num_classes)
    count, pair = len(_children_of(model, built)), not isinstance(built, nn.Sequential)
    return count, pair, 1 if pair else getattr(declaration(model), "default_cut", 1)


@functools.cache
def _layer_count(model: str, input_shape: tuple[int, ...], num_classes: int, start: int, stop: int) -> int:
    """Layers a part of children[start:stop] holds (Blocks opened)."""
    with torch.random.fork_rng(devices=[]):
        return len(layers_of(model_children(model, input_shape, num_classes)[start:stop]))


def resolve_cut(model: str, input_shape: tuple[int, ...], num_classes: int, cut: str, points: int) -> tuple:
    """The cut points of `--cut` (text: "", "K" or "K1,K2") for a method that cuts `points` times,
    checked against the model; defaults: the model's own cut, and for a second point its last child
    (the classifier) as the tail."""
    count, pair, default = model_layout(model, tuple(input_shape), num_classes)
    try:
        given = tuple(int(p) for p in cut.split(",")) if cut.strip() else ()
    except ValueError as ex:
        raise ModelError(f"--cut {cut!r} must be K or K1,K2 (integers)") from ex
    if given and len(given) != points:
        form = "K" if points == 1 else "K1,K2 (head | middle | tail)"
        raise ModelError(f"--cut {cut!r}: this method cuts the model {points} time(s); give {form}")
    resolved = given or ((default,) if points == 1 else (default, count - 1))
    if pair and resolved[0] != 1:
        raise ModelError(f"--cut {cut!r}: --model {model!r} is a (bottom, top) pair, cut at 1 only")
    low_high = f"1 <= K <= {count - 1}" if points == 1 else f"1 <= K1 < K2 <= {count - 1}"
    increasing = all(a < b for a, b in itertools.pairwise(resolved))
    if not (resolved[0] >= 1 and increasing and resolved[-1] < count):
        raise ModelError(
            f"--cut {cut or ','.join(map(str, resolved))!r} is out of range for --model {model!r} "
            f"({count} children): valid cuts are {low_high}"
        )
    return resolved


@functools.cache
def _first_parameter(
    model: str, input_shape: tuple[int, ...], num_classes: int, start: int, stop: int
) -> int:
    """Index, in the order parameters are registered while the model is built, of the first
    parameter that belongs to children[start:stop] (-1: that part has none)."""
    registered: list[nn.Parameter] = []
    handle = register_module_parameter_registration_hook(lambda m, n, p: registered.append(p))
    try:
        with torch.random.fork_rng(devices=[]):
            children = model_children(model, input_shape, num_classes)
    finally:
        handle.remove()
    mine = {id(p) for child in children[start:stop] for p in child.parameters()}
    return next((i for i, p in enumerate(registered) if id(p) in mine), -1)


def build_part(
    model: str, input_shape: tuple[int, ...], num_classes: int, start: int, stop: int
) -> nn.Sequential:
    """children[start:stop] of the model, drawn from the global RNG as if only they were built:
    the RNG is put back to its state at this call when the part's first parameter is registered,
    and left where it stood when the first parameter after the part was (the children around the
    part are built too, then dropped)."""
    shape = tuple(input_shape)
    first = _first_parameter(model, shape, num_classes, start, stop)
    after = _first_parameter(model, shape, num_classes, stop, model_layout(model, shape, num_classes)[0])
    state, seen, end = torch.get_rng_state(), [0], []

    def restart(module: nn.Module, name: str, param: nn.Parameter) -> None:
        if seen[0] == first:
            torch.set_rng_state(state)
        if seen[0] == after:
            end.append(torch.get_rng_state())
        seen[0] += 1

    handle = register_module_parameter_registration_hook(restart)
    try:
        children = model_children(model, input_shape, num_classes)
    finally:
        handle.remove()
    if end:
        torch.set_rng_state(end[0])
    return nn.Sequential(*layers_of(children[start:stop]))


def layers_of(children: list[nn.Module]) -> list[nn.Module]:
    """What a part holds: the children, each Block (zoo) opened into its layers."""
    return [layer for child in children for layer in (child if type(child) is Block else [child])]


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with parameters drawn from `seed`, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@dataclass(frozen=True)
class ModelParts:
    """The run's model as a method's ClientRole builds from it (methods/roles.py): the bottom is
    drawn from `seed` and the top from seed + 1 (see the module docstring).

    `cut` holds the cut points (`resolve_cut`); empty means the model's defaults."""

    model: str
    seed: int
    input_shape: tuple[int, ...] = INPUT_SHAPE
    num_classes: int = NUM_CLASSES
    cut: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        """Top-level children of the whole model."""
        return model_layout(self.model, tuple(self.input_shape), self.num_classes)[0]

    @property
    def cut_points(self) -> tuple[int, ...]:
        return self.cut or (model_layout(self.model, tuple(self.input_shape), self.num_classes)[2],)

    def _part(self, start: int, stop: int, seed: int) -> nn.Sequential:
        return seeded(lambda: build_part(self.model, self.input_shape, self.num_classes, start, stop), seed)

    def bottom(self) -> nn.Module:
        return self._part(0, self.cut_points[0], self.seed)

    def draw_bottom(self) -> nn.Module:
        """A bottom drawn from the global RNG as it is (no seed of its own)."""
        return build_part(self.model, self.input_shape, self.num_classes, 0, self.cut_points[0])

    def top(self) -> nn.Module:
        return self._part(self.cut_points[0], self.count, self.seed + 1)

    def _tail_start(self) -> int:
        """U-shaped methods: where the tail starts (the second cut; default the last child)."""
        return self.cut[1] if len(self.cut) > 1 else self.count - 1

    def _tail_layers(self) -> int:
        return _layer_count(
            self.model, tuple(self.input_shape), self.num_classes, self._tail_start(), self.count
        )

    def middle(self) -> nn.Module:
        """U-shaped methods: the server's part, the top up to the second cut."""
        return self.top()[: -self._tail_layers()]

    def tail(self) -> nn.Module:
        """U-shaped methods: the client's last layers, from the second cut on, drawn with the top."""
        return self.top()[-self._tail_layers() :]

    def seeded(self, build: Callable[[], nn.Module], salt: int) -> nn.Module:
        """Anything else a role adds (an auxiliary head), drawn from seed + salt."""
        return seeded(build, self.seed + salt)

    @property
    def smashed_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the smashed data at the (first) cut."""
        return _output_shape(self.model, tuple(self.input_shape), self.num_classes, self.cut_points[0])

    def check(self) -> None:
        """One dry forward pass through bottom and top: a ModelError naming both shapes when the
        top cannot take what the bottom puts out, or when the logits are not (n, num_classes)."""
        check_forward(self.bottom(), self.top(), self)


def check_forward(bottom: nn.Module, top: nn.Module, parts: ModelParts) -> None:
    x = torch.zeros(2, *parts.input_shape)
    with torch.no_grad():
        try:
            smashed = bottom.eval()(x)
        except Exception as ex:  # any layer's error: reported with the shapes, not swallowed
            raise ModelError(
                f"--model {parts.model!r}: the bottom (children 0..{parts.cut_points[0] - 1}) cannot take "
                f"input of shape {tuple(parts.input_shape)}: {ex}"
            ) from ex
        try:
            logits = top.eval()(smashed)
        except Exception as ex:
            raise ModelError(
                f"--cut {parts.cut_points[0]}: the bottom puts out {tuple(smashed.shape[1:])} per sample, "
                f"which the top cannot take (it starts with {_first_layer(top)}): {ex}"
            ) from ex
    if tuple(logits.shape) != (2, parts.num_classes):
        raise ModelError(
            f"--model {parts.model!r}: outputs {tuple(logits.shape[1:])} per sample; expected "
            f"({parts.num_classes},), one logit per class of the dataset"
        )


def _first_layer(top: nn.Module) -> str:
    """The top's first weighted layer and the input it takes, for an error message."""
    for m in top.modules():
        if isinstance(m, nn.Linear):
            return f"Linear, taking (..., {m.in_features})"
        if isinstance(m, nn.modules.conv._ConvNd):
            return f"{type(m).__name__}, taking {m.in_channels} channels"
    return repr(next(iter(top.children()), top))


@functools.cache
def _output_shape(model: str, input_shape: tuple[int, ...], num_classes: int, stop: int) -> tuple[int, ...]:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        part = nn.Sequential(*model_children(model, input_shape, num_classes)[:stop]).eval()
        return tuple(part(torch.zeros(1, *input_shape)).shape[1:])


# --- randomness in a training step ----------------------------------------------------

SERVER_STREAM = 2**32  # the server's randomness stream id: above any client id


def has_randomness(module: nn.Module) -> bool:
    """Whether a training forward of `module` draws random numbers (dropout)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())


@contextlib.contextmanager
def step_randomness(active: bool, device: torch.device, seed: int, stream: int, epoch: int, step: int):
    """Random draws inside (dropout masks) seeded by (seed, client or SERVER_STREAM, epoch, step),
    and the process's RNG left as it was: the same masks in one process or in many Ray actors.
    Nothing happens where the model draws nothing (`active` False)."""
    if not active:
        yield
        return
    state = np.random.SeedSequence([seed, stream, epoch, step]).generate_state(1, dtype=np.uint64)[0]
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
        yield


# --- weights -------------------------------------------------------------------------


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weights_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict: what leaves its process or outlives a step."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def state_nbytes(module: nn.Module) -> int:
    """Bytes of a module's state dict (parameters and buffers): what a weight transfer moves."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def as_parts(model: str | ModelParts) -> ModelParts:
    """A built-in model's name stands for its default cut on Fashion-MNIST-shaped input."""
    return model if isinstance(model, ModelParts) else ModelParts(model, 0)


def bottom_state_nbytes(model: str | ModelParts) -> int:
    """Bytes of a client's bottom model weights: what SFL and SSL move per transfer."""
    return _bottom_state_nbytes(as_parts(model), torch.get_default_dtype())


@functools.cache
def _bottom_state_nbytes(parts: ModelParts, dtype: torch.dtype) -> int:  # dtype: part of the key
    return state_nbytes(parts.bottom())


def smashed_shape(model: str | ModelParts) -> tuple[int, ...]:
    """Per-sample shape of the smashed data at the split layer of `model`."""
    return as_parts(model).smashed_shape


def build_client_model(model: str, seed: int, full: bool) -> nn.Module:
    """A client's starting model: the bottom half, or for cl/fl the whole model (ModelParts)."""
    parts = ModelParts(model, seed)
    return nn.Sequential(parts.bottom(), parts.top()) if full else parts.bottom()


@dataclass(frozen=True)
class SplitModel:
    """A built-in model at its default cut on Fashion-MNIST-shaped input, built from the global
    RNG (benchmarks and tests that predate ModelParts read this)."""

    name: str

    def build_bottom(self) -> nn.Module:
        parts = ModelParts(self.name, 0)
        return build_part(self.name, INPUT_SHAPE, NUM_CLASSES, 0, parts.cut_points[0])

    def build_top(self) -> nn.Module:
        parts = ModelParts(self.name, 0)
        return build_part(self.name, INPUT_SHAPE, NUM_CLASSES, parts.cut_points[0], parts.count)


SPLIT_MODELS: dict[str, SplitModel] = {name: SplitModel(name) for name in BUILTIN_MODELS}
