"""K clients' bottom models run as a few grouped models: a shard steps all its clients in a few large calls.

The bottom models (nodes/models.py) hold only Conv2d, BatchNorm2d, ReLU, pooling
and residual adds, all of which keep channels apart. So K copies of a bottom run
as one model whose Conv2d(cin, cout) is Conv2d(K*cin, K*cout, groups=K) and whose
BatchNorm2d(c) is BatchNorm2d(K*c): client k's batch sits on channel group k and
every layer keeps the groups apart (BatchNorm's per-channel statistics over a
client's own batch are exactly per-client BatchNorm). Backward through the graph
leaves each client's weight gradients in its own slice, and Adam and SGD with
momentum are element-wise, so ONE optimizer over the grouped parameters is K
per-client optimizers with the same rate.

The shard's ClientStates (nodes/client_state.py) is the single source of truth:
a compute group of clients a..b-1 is a grouped model whose parameters, buffers
and optimizer moments are the views block[a:b] of the store, so stepping it
writes the clients' rows with no copy. Step counts (one per grouped tensor) are
copied back after each step, and the store's `version` tells the group when
something else changed the clients (a reset optimizer, loaded weights, a
per-client step): it then re-reads their optimizer state.

Activation memory. PSL's step forwards every client, waits for the server, then
back-propagates: keeping every group's graph across the server step costs
K x b samples of activations (gigabytes for thousands of clients). Past
`graph_samples` samples the forward runs without a graph and `step` runs each
compute group's forward again, back-propagates it and frees it before the
next: one more bottom forward per step, bounded memory, the same numbers
(the same operations on the same inputs).

The per-client loop in ClientShard stays for everything else: SSL's turns,
GPSL's uneven batches, the whole-model baselines.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sglr_ray.nodes.client_state import ClientStates
from sglr_ray.nodes.models import BasicBlock
from sglr_ray.nodes.optim import make_optimizer

# Layers that act on each channel (or each pair of matching channels) alone.
_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)
# Containers whose forward only chains children, adds matching channels and applies ReLU.
_CONTAINERS = (nn.Sequential, BasicBlock)


def groupable(model: nn.Module) -> bool:
    """Whether copies of `model` can run as one grouped model (every module is known to keep
    channels apart); models with anything else (Linear, Flatten, custom blocks) are not."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.BatchNorm2d):
            if type(module) not in (nn.Conv2d, nn.BatchNorm2d):  # a subclass may do more
                return False
        elif not isinstance(module, _CHANNELWISE + _CONTAINERS):
            return False
    return True


def _grouped_layer(layer: nn.Module, k: int) -> nn.Module:
    """`layer` for k clients side by side on the channel axis, on the meta device (no RNG used)."""
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(
            k * layer.in_channels, k * layer.out_channels, layer.kernel_size, layer.stride,
            layer.padding, layer.dilation, k * layer.groups, layer.bias is not None,
            layer.padding_mode, device="meta", dtype=layer.weight.dtype,
        )  # fmt: skip
    if isinstance(layer, nn.BatchNorm2d):
        held = [t for t in (layer.weight, layer.running_mean) if t is not None]
        dtype = held[0].dtype if held else torch.get_default_dtype()
        return nn.BatchNorm2d(
            k * layer.num_features, layer.eps, layer.momentum, layer.affine,
            layer.track_running_stats, device="meta", dtype=dtype,
        )  # fmt: skip
    grouped = copy.copy(layer)  # a container or a stateless layer: same code, grouped children
    grouped._parameters, grouped._buffers = {}, {}  # none to copy (`groupable`); not shared with `layer`
    grouped._modules = {name: _grouped_layer(child, k) for name, child in layer.named_children()}
    return grouped


# Clients per grouped model on the CPU. One group of a whole shard (1000 clients) makes
# every activation a gigabyte that each layer streams through memory; groups of a few
# clients keep a layer's tensors in cache and still drop the per-client calls. AlexNet,
# b = 8, one thread (results/benchmarks/grouped_clients.md): groups of 8 step 256 clients
# 25% faster than one group of 256, 6% faster than the bare per-client loop, and vmap is
# 1.7 times the loop. A GPU takes the whole shard as one group.
CPU_CLIENTS_PER_GROUP = 8
# Samples (clients x b) whose bottom activations a shard keeps across the server step; past
# it, `step` recomputes each group's forward. AlexNet's bottom keeps about 200 KB a sample:
# 4096 samples are under 1 GB, where 5000 clients x 8 would be 8 GB.
GRAPH_SAMPLES = 4096


class GroupedBottoms:
    """The bottom models of a shard's clients (their rows of `states`), trained as a few
    grouped models of `clients_per_group` consecutive clients (default: CPU_CLIENTS_PER_GROUP
    on the CPU, all of them on a GPU); ONE optimizer steps every group. `template` is a
    client model (`groupable`) on the device the store lives on."""

    def __init__(
        self,
        states: ClientStates,
        template: nn.Module,
        clients_per_group: int | None = None,
        graph_samples: int | None = None,
    ) -> None:
        if not groupable(template):
            raise ValueError("grouped clients need bottom models of Conv2d, BatchNorm2d, ReLU and pooling")
        self.k, self.states = states.count, states
        on_gpu = states.weights.device.type == "cuda"
        size = clients_per_group or (self.k if on_gpu else CPU_CLIENTS_PER_GROUP)
        if size < 1:
            raise ValueError(f"clients_per_group must be at least 1, got {size}")
        self.graph_samples = GRAPH_SAMPLES if graph_samples is None else graph_samples
        self._groups = [slice(start, min(start + size, self.k)) for start in range(0, self.k, size)]
        self.modules = [self._bound_group(template, rows) for rows in self._groups]
        self._params = [dict(m.named_parameters()) for m in self.modules]
        self.optimizer = make_optimizer(
            [p for m in self.modules for p in m.parameters()], states.optimizer_name, states.lr
        )
        self._seen_version = -1  # the store's version the optimizer state was read at
        self._inputs: torch.Tensor | None = None  # the forward's inputs, where `step` recomputes

    @classmethod
    def from_models(
        cls, models: Sequence[nn.Module], optimizer_name: str, lr: float, clients_per_group: int | None = None
    ) -> GroupedBottoms:
        """A store of `models`' current weights (fresh optimizers), grouped: for benchmarks that
        start from modules; `states.module(k)` reads client k back."""
        states = ClientStates(models[0], len(models), optimizer_name, lr)
        for k, model in enumerate(models):
            states.load(model.state_dict(), [k])
        return cls(states, models[0], clients_per_group)

    def _bound_group(self, template: nn.Module, rows: slice) -> nn.Module:
        """The grouped model of clients `rows`, its tensors views of their blocks of the store
        (0-dim buffers, BatchNorm's batch counter, are one per group: see `_counters`)."""
        module = _grouped_layer(template, rows.stop - rows.start).train()
        for sub_name, sub in module.named_modules():
            prefix = f"{sub_name}." if sub_name else ""
            for name, param in list(sub._parameters.items()):
                if param is not None:
                    view = self.states.blocks[prefix + name][rows].view(param.shape)
                    sub._parameters[name] = nn.Parameter(view)  # shares the store's memory
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    block = self.states.blocks[prefix + name][rows]
                    sub._buffers[name] = block[0].clone() if buffer.dim() == 0 else block.view(buffer.shape)
        return module

    # --- training -----------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (K, b, *input shape), client k's batch at [k] -> smashed data (K*b, *smashed shape),
        client k's rows at [k*b, (k+1)*b): the clients' outputs concatenated. Keeps the graph
        (up to `graph_samples` samples; past it, `step` recomputes it)."""
        if x.shape[0] != self.k:
            raise ValueError(f"{x.shape[0]} client batches for {self.k} grouped clients")
        self._read_optimizer_state()
        if x.shape[0] * x.shape[1] <= self.graph_samples:
            self._inputs = None
            return self._run_all(x)
        saved = {name: block.clone() for name, block in self._buffer_blocks().items()}
        with torch.no_grad():  # running statistics move once: in `step`'s forward
            out = self._run_all(x)
        for name, block in self._buffer_blocks().items():
            block.copy_(saved[name])
        self._inputs = x
        return out

    def _run_all(self, x: torch.Tensor) -> torch.Tensor:
        pairs = zip(self.modules, self._groups, strict=True)
        if torch.is_grad_enabled():  # the graph runs through the concatenation
            outs = [self._run(m, g, x[g]) for m, g in pairs]
            return outs[0] if len(outs) == 1 else torch.cat(outs)
        # Without a graph each group's output goes straight into its rows: a list of them and
        # their concatenation would hold the step's smashed data twice (1.3 GB at 5000 x 8)
        out, start = None, 0
        for module, rows in pairs:
            part = self._run(module, rows, x[rows])
            if out is None:
                out = part.new_empty(x.shape[0] * x.shape[1], *part.shape[1:])
            out[start : start + len(part)] = part
            start += len(part)
        return out

    def _run(self, module: nn.Module, rows: slice, x: torch.Tensor) -> torch.Tensor:
        """One compute group's forward; its batch counters go to its clients' rows."""
        counters = self._counters(module, rows)
        for block, counter in counters:
            counter.copy_(block[0])
        out = _run_group(module, x)
        with torch.no_grad():
            for block, counter in counters:
                block.copy_(counter.expand_as(block))
        return out

    def _counters(self, module: nn.Module, rows: slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (self.states.blocks[name][rows], buffer)
            for name, buffer in module.named_buffers()
            if buffer.dim() == 0
        ]

    def _buffer_blocks(self) -> dict[str, torch.Tensor]:
        params = set(self.states.param_names)
        return {name: block for name, block in self.states.blocks.items() if name not in params}

    def step(
        self,
        smashed: torch.Tensor,
        grad: torch.Tensor | Sequence[torch.Tensor],
        autocast: Callable[[], Any] = contextlib.nullcontext,
    ) -> None:
        """Back-propagate `grad` (rows as in `smashed`, the output of `forward`; or one tensor per
        client, in client order) and step every client; where `forward` kept no graph, each
        group's forward runs again under `autocast`, and takes only its own clients' gradients
        (a concatenation of all of them would be one more copy of the step's smashed data)."""
        per_client = not torch.is_tensor(grad)
        self.optimizer.zero_grad(set_to_none=True)
        if self._inputs is None:
            smashed.backward(torch.cat(list(grad)) if per_client else grad)
        else:
            start = 0
            for module, rows in zip(self.modules, self._groups, strict=True):
                with autocast():
                    out = self._run(module, rows, self._inputs[rows])
                out.backward(torch.cat(list(grad[rows])) if per_client else grad[start : start + len(out)])
                start += len(out)
            self._inputs = None
        self.optimizer.step()
        self._write_optimizer_state()

    # --- optimizer state: the store's rows ----------------------------------------------

    def _read_optimizer_state(self) -> None:
        """Bind each group's optimizer state to its clients' moment rows; fresh clients (reset,
        never stepped) start with none, as a new optimizer would. Only after outside changes."""
        if self.states.version == self._seen_version:
            return
        state = self.optimizer.state
        for params, rows in zip(self._params, self._groups, strict=True):
            fresh = self.states.fresh[rows]
            if bool(fresh.all()):
                for param in params.values():
                    state.pop(param, None)
            elif bool(fresh.any()):
                raise ValueError("some grouped clients have optimizer state and some do not")
            else:
                for name, param in params.items():
                    state[param] = self.states.group_optimizer_entry(rows, name, param.shape)
        self._seen_version = self.states.version

    def _write_optimizer_state(self) -> None:
        """After a step: the step counts to the store, and a group's first state (the optimizer
        made it) copied into the store's rows, then bound to them."""
        for params, rows in zip(self._params, self._groups, strict=True):
            first = bool(self.states.fresh[rows.start])
            self.states.store_group_optimizer(rows, params, self.optimizer.state)
            if first:
                for name, param in params.items():
                    self.optimizer.state[param] = self.states.group_optimizer_entry(rows, name, param.shape)


def _run_group(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A grouped model on its k clients' batches x (k, b, ...): client j's batch goes on channel
    group j, and the output's channel groups come back as client j's rows of (k*b, ...)."""
    k, b = x.shape[:2]
    out = module(x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:]))
    channels = out.shape[1] // k
    return (
        out.reshape(b, k, channels, *out.shape[2:]).transpose(0, 1).reshape(k * b, channels, *out.shape[2:])
    )
