"""K clients' bottom models run as ONE model: a shard steps all its clients in a few large calls.

The bottom models (nodes/models.py) hold only Conv2d, BatchNorm2d, ReLU, pooling
and residual adds, all of which keep channels apart. So K copies of a bottom run
as one model whose Conv2d(cin, cout) is Conv2d(K*cin, K*cout, groups=K) and whose
BatchNorm2d(c) is BatchNorm2d(K*c): client k's batch sits on channel group k and
every layer keeps the groups apart (BatchNorm's per-channel statistics over a
client's own batch are exactly per-client BatchNorm). Backward through the one
graph leaves each client's weight gradients in its own slice, and Adam and SGD
with momentum are element-wise, so ONE optimizer over the grouped parameters is
K per-client optimizers with the same rate.

The group is the single source of truth. Each client's model parameters and
buffers are views of its slice of the grouped ones, so `client.model` always
holds the current weights (evaluation, FedAvg uploads, SSL hand-over and
checkpoints read it) and loading weights into it writes the group. After the
first step each client's optimizer state is a view of its slice of the grouped
optimizer's state too, so a client's `optimizer.state_dict()` is what the
per-client loop would have. `in_sync` notices a replaced model or optimizer or
a cleared or reloaded optimizer state (say, optimizers reset after FedAvg);
`gather` then rebuilds the group from the clients.

The per-client loop in ClientShard stays for everything else: SSL's turns,
GPSL's uneven batches, the whole-model baselines.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

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


def _slice_rows(grouped: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """Client k's part of a grouped tensor: rows [k*rows, (k+1)*rows) of dim 0; 0-dim tensors
    (BatchNorm's batch counter, an optimizer's step count) are shared by every client."""
    return grouped if grouped.dim() == 0 else grouped[k * rows : (k + 1) * rows]


# Clients per grouped model on the CPU. One group of a whole shard (1000 clients) makes
# every activation a gigabyte that each layer streams through memory; groups of a few
# clients keep a layer's tensors in cache and still drop the per-client calls. AlexNet,
# b = 8, one thread (results/benchmarks/grouped_clients.md): groups of 8 step 256 clients
# 25% faster than one group of 256, 6% faster than the bare per-client loop, and vmap is
# 1.7 times the loop. A GPU takes the whole shard as one group.
CPU_CLIENTS_PER_GROUP = 8


class GroupedBottoms:
    """The bottom models and optimizers of K clients, trained as a few grouped models.

    `models[k]` and `optimizers[k]` are client k's; the models must be identical in
    structure (`groupable`). Consecutive clients share a grouped model, `clients_per_group`
    to one (default: CPU_CLIENTS_PER_GROUP on the CPU, all K on a GPU); ONE optimizer steps
    every group. The clients' current weights and optimizer state become the groups', and
    from then on they are views of them.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        optimizer_name: str,
        lr: float,
        clients_per_group: int | None = None,
    ) -> None:
        if not models or not all(groupable(m) for m in models):
            raise ValueError("grouped clients need bottom models of Conv2d, BatchNorm2d, ReLU and pooling")
        device = next(models[0].parameters()).device
        self.k = len(models)
        size = clients_per_group or (self.k if device.type == "cuda" else CPU_CLIENTS_PER_GROUP)
        if size < 1:
            raise ValueError(f"clients_per_group must be at least 1, got {size}")
        self._groups = [range(start, min(start + size, self.k)) for start in range(0, self.k, size)]
        # client k sits in group _place[k][0], at position _place[k][1]
        self._place = [(g, j) for g, members in enumerate(self._groups) for j in range(len(members))]
        self.modules = [
            _grouped_layer(models[0], len(members)).to_empty(device=device).train()
            for members in self._groups
        ]
        self._tensors = [dict(m.state_dict(keep_vars=True)) for m in self.modules]  # name -> tensor
        self._params = [dict(m.named_parameters()) for m in self.modules]
        self.optimizer = make_optimizer([p for m in self.modules for p in m.parameters()], optimizer_name, lr)
        self.gather(models, optimizers)

    # --- training -----------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (K, b, *input shape), client k's batch at [k] -> smashed data (K*b, *smashed shape),
        client k's rows at [k*b, (k+1)*b): the clients' outputs concatenated. Keeps the graph."""
        if x.shape[0] != self.k:
            raise ValueError(f"{x.shape[0]} client batches for {self.k} grouped clients")
        outs = [_run_group(m, x[g.start : g.stop]) for m, g in zip(self.modules, self._groups, strict=True)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def step(self, smashed: torch.Tensor, grad: torch.Tensor) -> None:
        """Back-propagate `grad` (rows as in `smashed`, the output of `forward`) and step every client."""
        self.optimizer.zero_grad(set_to_none=True)
        smashed.backward(grad)
        self.optimizer.step()
        if self._first_entries[0] is None:  # the first step created the optimizer state
            self._bind_optimizer_state()

    # --- the clients' views -------------------------------------------------------------

    def in_sync(self, models: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer]) -> bool:
        """Whether the clients still hold the models and optimizers bound to the groups, with the
        optimizer state they gave them (cheap: one look-up per client)."""
        return all(
            model is bound_model and optimizer is bound_opt and optimizer.state.get(param) is entry
            for model, optimizer, bound_model, bound_opt, param, entry in zip(
                models, optimizers, self._models, self._optimizers, self._first_params,
                self._first_entries, strict=True,
            )
        )  # fmt: skip

    @torch.no_grad()
    def gather(self, models: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Make the clients' current weights, buffers and optimizer state the groups', then make
        the clients' models and optimizer state views of them again."""
        if len(models) != self.k or len(optimizers) != self.k:
            raise ValueError(f"{len(models)} models and {len(optimizers)} optimizers for {self.k} clients")
        states = [m.state_dict() for m in models]
        for tensors, members in zip(self._tensors, self._groups, strict=True):
            for name, tensor in tensors.items():
                parts = [states[k][name] for k in members]
                tensor.copy_(parts[0] if tensor.dim() == 0 else torch.cat(parts))
        self._models, self._optimizers = list(models), list(optimizers)
        self._bind_models()
        self._gather_optimizer_state()
        self._bind_optimizer_state()

    def _named_params(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        named = list(model.named_parameters())
        if [n for n, _ in named] != list(self._params[0]):
            raise ValueError(f"a client's parameters {[n for n, _ in named]} are not the group's")
        return named

    def _bind_models(self) -> None:
        """Every client parameter and buffer becomes a view of its slice of its group's."""
        for model, (g, j) in zip(self._models, self._place, strict=True):
            for name, param in self._named_params(model):
                param.data = _slice_rows(self._params[g][name].detach(), j, param.shape[0])
            for module_name, module in model.named_modules():
                for name, buffer in list(module._buffers.items()):
                    if buffer is not None:
                        grouped = self._tensors[g][f"{module_name}.{name}" if module_name else name]
                        rows = buffer.shape[0] if buffer.dim() else 0
                        module._buffers[name] = _slice_rows(grouped, j, rows)
        self._first_params = [next(iter(m.parameters())) for m in self._models]

    def _gather_optimizer_state(self) -> None:
        """The grouped optimizer's state from the clients': all fresh, or all stepped alike."""
        per_client = [
            {name: opt.state.get(p) for name, p in self._named_params(m)}
            for m, opt in zip(self._models, self._optimizers, strict=True)
        ]
        self.optimizer.state.clear()
        fresh = [not any(entries.values()) for entries in per_client]
        if all(fresh):
            return
        if any(fresh):
            raise ValueError("some grouped clients have optimizer state and some do not")
        first = per_client[0]
        for params, members in zip(self._params, self._groups, strict=True):
            for name, grouped in params.items():
                entry = {}
                for key, value in first[name].items():
                    values = [per_client[k][name][key] for k in members]
                    if torch.is_tensor(value) and value.dim() > 0:
                        entry[key] = torch.cat(values).to(grouped.device)
                        continue
                    # a step count: one per grouped parameter, so it must be every client's
                    if any(not torch.equal(torch.as_tensor(v), torch.as_tensor(value)) for v in values):
                        raise ValueError(f"the clients' optimizer {key!r} differs; they cannot step as one")
                    entry[key] = value.clone() if torch.is_tensor(value) else value
                self.optimizer.state[grouped] = entry

    def _bind_optimizer_state(self) -> None:
        """Every client's optimizer state becomes views of its slice of the grouped state."""
        state = self.optimizer.state
        for model, optimizer, (g, j) in zip(self._models, self._optimizers, self._place, strict=True):
            for name, param in self._named_params(model):
                grouped = state.get(self._params[g][name])
                if not grouped:
                    optimizer.state.pop(param, None)
                    continue
                optimizer.state[param] = {
                    key: _slice_rows(v, j, param.shape[0]) if torch.is_tensor(v) else v
                    for key, v in grouped.items()
                }
        self._first_entries = [
            opt.state.get(p) for opt, p in zip(self._optimizers, self._first_params, strict=True)
        ]

    def release(self) -> None:
        """Hand the clients back to the per-client loop: give each client its own copies of the
        tensors a group shares (step counts, BatchNorm's batch counters). Weights and moments
        stay views of the (no longer stepped) groups' storage; each client writes only its own."""
        for model, optimizer in zip(self._models, self._optimizers, strict=True):
            for module in model.modules():
                for name, buffer in list(module._buffers.items()):
                    if buffer is not None and buffer.dim() == 0:
                        module._buffers[name] = buffer.clone()
            for entry in optimizer.state.values():
                for key, v in entry.items():
                    if torch.is_tensor(v) and v.dim() == 0:
                        entry[key] = v.clone()


def _run_group(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A grouped model on its k clients' batches x (k, b, ...): client j's batch goes on channel
    group j, and the output's channel groups come back as client j's rows of (k*b, ...)."""
    k, b = x.shape[:2]
    out = module(x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:]))
    channels = out.shape[1] // k
    return (
        out.reshape(b, k, channels, *out.shape[2:]).transpose(0, 1).reshape(k * b, channels, *out.shape[2:])
    )
