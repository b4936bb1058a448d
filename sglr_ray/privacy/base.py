"""The two interfaces of the privacy suite: a Defense changes what a client does, an Attack
watches (or, a malicious server, changes) training and scores what it learned afterwards.

Both plug into a method the way a method plugs into the engine: by returning a `Method` with
its parts wrapped (`install`), never by the engine branching on a name.

- A Defense is a ClientRole wrapper (`DefendedRole`): it may change the labels a client
  trains on (`labels`, label randomized response) and the smashed data it computes
  (`smashed`, noise or a NoPeek loss), and says what a server sees of smashed data
  (`sent`) so that attacks see what the defended protocol sends.
- An Attack may wrap the method's SplitRule or server step during training (`install`),
  then turns an `Evidence` (gathered by execution/attacks.py after training) into metric
  values (`score`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sglr_ray.methods.base import Delivery, Method, RunConfig, SplitRule
from sglr_ray.methods.roles import ClientRole, Parts, StepContext
from sglr_ray.nodes.codec import parse_codec

DEFENSE_SALT = 0xDEF  # the defenses' random streams: ctx.generator(DEFENSE_SALT + k)
KEPT_DIM = 256  # values a row of an observed gradient is projected to (ObservingRule)
PROJECTION_SALT = 0x9B0


class Defense:
    """One defense at one strength `param` (the NAME:PARAM of --defense)."""

    name = ""
    summary = ""
    param_name = "param"
    low, high, low_open = 0.0, float("inf"), False  # the range of `param`

    def __init__(self, param: float) -> None:
        self.param = param

    def applies(self, method: Method) -> str | None:
        """Why the defense cannot protect `method`, or None where it can."""
        if method.client.whole_model or not method.client.sends_smashed:
            return "whose clients send no smashed data"
        return None

    def labels(self, y: Tensor, generator: torch.Generator) -> Tensor:
        """The labels a client trains on (default: its own)."""
        return y

    def smashed(self, s: Tensor, x: Tensor, generator: torch.Generator) -> Tensor:
        """Smashed data as uploaded in training, differentiable in s (default: unchanged)."""
        return s

    def sent(self, s: Tensor, generator: torch.Generator) -> Tensor:
        """What a server sees of smashed data s outside training (the attacks' view)."""
        return s

    def accounting(self, config: RunConfig) -> dict[str, float]:
        """A privacy accountant's figures for this run, where the mechanism has one."""
        return {}


class DelegatingRole(ClientRole):
    """A method's ClientRole, every hook delegated: subclasses change one."""

    grouped = False  # the grouped path computes PSL's forward only, without a wrapper's changes

    def __init__(self, inner: ClientRole) -> None:
        self.inner = inner
        self.whole_model, self.sends_smashed = inner.whole_model, inner.sends_smashed
        self.sends_labels, self.receives_gradient = inner.sends_labels, inner.receives_gradient

    def build_client(self, parts: Parts) -> nn.Module:
        return self.inner.build_client(parts)

    def build_server(self, parts: Parts) -> nn.Module | None:
        return self.inner.build_server(parts)

    def forward(self, model, optimizer, x, y, ctx: StepContext):
        return self.inner.forward(model, optimizer, x, y, ctx)

    def backward(self, model, optimizer, kept, received) -> None:
        self.inner.backward(model, optimizer, kept, received)

    def eval_pair(self, model, server_model):
        return self.inner.eval_pair(model, server_model)

    def smashing_model(self, model: nn.Module) -> nn.Module:
        return self.inner.smashing_model(model)


class DefendedRole(DelegatingRole):
    """A method's ClientRole with a Defense around its forward step."""

    def __init__(self, inner: ClientRole, defense: Defense) -> None:
        super().__init__(inner)
        self.defense = defense

    def forward(self, model, optimizer, x, y, ctx: StepContext):
        y = self.defense.labels(y, ctx.generator(DEFENSE_SALT))
        generator = ctx.generator(DEFENSE_SALT + 1)

        def defend(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            return self.defense.smashed(output, inputs[0], generator)

        # A hook on the smashing model changes its output inside the inner role's own forward,
        # so whatever the role keeps for `backward` already includes the defense's graph.
        handle = self.inner.smashing_model(model).register_forward_hook(defend)
        try:
            return self.inner.forward(model, optimizer, x, y, ctx)
        finally:
            handle.remove()


class GradientTap:
    """The gradient the server's model last received at its output, from the clients (usl's
    dL/dz): a tensor hook, so the method's own code is untouched."""

    def __init__(self) -> None:
        self.last: Tensor | None = None

    def attach(self, module: nn.Module) -> nn.Module:
        def on_forward(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            if output.requires_grad:
                output.register_hook(self._keep)

        module.register_forward_hook(on_forward)
        return module

    def _keep(self, grad: Tensor) -> None:
        self.last = grad.detach()


class TappedRole(DelegatingRole):
    """The method's role, whose server model carries a GradientTap."""

    def __init__(self, inner: ClientRole, tap: GradientTap) -> None:
        super().__init__(inner)
        self.tap = tap

    def build_server(self, parts: Parts) -> nn.Module | None:
        model = self.inner.build_server(parts)
        return None if model is None else self.tap.attach(model)


@dataclass
class Evidence:
    """What an attack gets after training, about its target client (execution/attacks.py)."""

    config: RunConfig
    client_id: int
    bottom: nn.Module  # the target's smashing model, trained, in eval mode
    sent: Callable[[Tensor], Tensor]  # model inputs -> smashed data as the server sees it
    aux_inputs: Tensor  # the server's own images (model inputs), no client holds them
    target_inputs: Tensor  # the target's test images (model inputs)
    to_image: Callable[[Tensor], Tensor]  # model inputs -> the client's image on [0, 1]
    client_view: Callable[[Tensor], Tensor]  # a model-sized image on [0, 1] -> the client's image
    # The honest decoder (measure/leakage.py): (sent, aux, targets) -> (originals, reconstructions).
    invert: Callable[..., tuple[Tensor, Tensor]]
    recorded: Any = None  # what the attack's training-time hook kept on the server
    batch_labels: Callable[[int, int, int], Tensor] | None = None  # (client, epoch, step) -> labels


class Attack:
    """One attack: where it applies, its training-time hook, its score."""

    name = ""
    summary = ""
    metrics: tuple[str, ...] = ()
    uses_aux = False  # whether the server trains on its own images (--leakage-aux-samples)

    def applies(self, method: Method) -> str | None:
        """Why the attack does not apply to `method` (a clause naming the reason), or None."""
        if method.client.whole_model or not method.client.sends_smashed:
            return "which has no split layer"
        return None

    def install(self, method: Method, config: RunConfig) -> Method:
        """`method` with the attack's training-time hook (default: none; it watches afterwards)."""
        return method

    def recorded(self, server: Any) -> Any:
        """What the hook kept on `server` (nodes.server.Server), fetched after training."""
        return None

    def score(self, evidence: Evidence) -> dict[str, float]:
        raise NotImplementedError


@dataclass
class Observation:
    """One step as the server saw it at the SplitRule: the target's gradient rows, the
    broadcast (if any) and who received it."""

    own: Tensor | None
    shared: Tensor | None
    shared_to: list[int]
    clients: list[int] = field(default_factory=list)


class ObservingRule:
    """A SplitRule that delegates to the method's and keeps what the server holds about
    `client_id` at each step. Keyed by (epoch, step), so a replayed epoch overwrites instead of
    duplicating. Gradients are kept through a fixed random projection to KEPT_DIM values a row
    (cosines and norms survive it up to a few per cent, Johnson-Lindenstrauss), so a long run's
    record stays a few MB."""

    def __init__(
        self,
        inner: SplitRule,
        attack: str,
        client_id: int,
        seed: int,
        tap: GradientTap | None = None,
        view: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.inner, self.attack, self.client_id, self.seed, self.tap = inner, attack, client_id, seed, tap
        self.view = view  # what a client decodes of a gradient sent down (--compress), or None: as is
        self.steps: dict[tuple[int, int], Observation] = {}
        self._projection: Tensor | None = None

    def keep(self, grad: Tensor) -> Tensor:
        grad = grad.detach().cpu()
        flat = (grad if self.view is None else self.view(grad)).float().flatten(1)
        if flat.shape[1] <= KEPT_DIM:
            return flat
        if self._projection is None:
            generator = torch.Generator().manual_seed(self.seed + PROJECTION_SALT)
            self._projection = torch.randn(flat.shape[1], KEPT_DIM, generator=generator) / KEPT_DIM**0.5
        return flat @ self._projection

    def _tapped_rows(self, grads: Mapping[int, Tensor]) -> Tensor:
        """The target's rows of the tapped gradient: the server's batch holds the clients' rows in
        the order of `grads` (ServerBatch.rows)."""
        start = 0
        for client_id, grad in grads.items():
            if client_id == self.client_id:
                return self.tap.last[start : start + len(grad)]
            start += len(grad)
        raise LookupError(f"client {self.client_id} is not in this step's batch")

    def deliver(self, grads: Mapping[int, Tensor], epoch: int, step: int) -> Delivery:
        delivery = self.inner.deliver(grads, epoch, step)
        if self.client_id in grads:
            shared = None if delivery.shared is None else self.keep(delivery.shared)
            own = self.keep(grads[self.client_id] if self.tap is None else self._tapped_rows(grads))
            self.steps[(epoch, step)] = Observation(own, shared, list(delivery.shared_to), sorted(grads))
        return delivery


def observing(method: Method, attack: str, tapped: bool = False, received: bool = False) -> Method:
    """`method` whose server keeps an ObservingRule for `attack` around its SplitRule; `tapped`:
    it keeps the gradient arriving at the server's model (usl's dL/dz), not the one it returns;
    `received`: it keeps what the clients decode of what it returns (through --compress's codec),
    not what the server computed."""
    if tapped and received:
        raise ValueError("an ObservingRule keeps either the tapped gradient or the one received, not both")
    inner, tap = method.rule, GradientTap() if tapped else None

    def rule(run: RunConfig) -> SplitRule:
        view = parse_codec(run.compress).roundtrip if received else None
        return ObservingRule(inner(run), attack, run.leakage_client, run.seed, tap, view)

    client = method.client if tap is None else TappedRole(method.client, tap)
    return dataclasses.replace(method, rule=rule, client=client)


def observed(server: Any, attack: str) -> dict[tuple[int, int], Observation]:
    """The ObservingRule of `attack` among the rules wrapped around the server's."""
    rule = server.rule
    while rule is not None:
        if isinstance(rule, ObservingRule) and rule.attack == attack:
            return rule.steps
        rule = getattr(rule, "inner", None)
    raise LookupError(f"the server keeps no observations for attack {attack!r}")
