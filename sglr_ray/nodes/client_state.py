"""ClientStates: the weights and optimizer state of a shard's C clients, in flat tensors.

A shard of 10,000 clients cannot afford an nn.Module and an optimizer object per
client (about 350 KB of Python objects each, before any weight). Instead it
keeps every client's state in a few flat tensors and builds modules only for
the clients it is stepping, as views of their rows.

Layout. For each entry `name` of the client model's state dict (parameters
and buffers, in state-dict order) of shape S there is a block of shape (C, *S):
client k's tensor is `block[k]`. The blocks of all floating entries are
consecutive slices of ONE flat buffer (`weights`), block after block (not
client after client), so

- a client's tensor is a contiguous view, `block[k]`, and
- the tensors of consecutive clients a..b-1 are one contiguous view,
  `block[a:b]`, which is exactly the weight of their grouped
  Conv2d(groups=b-a) (nodes/grouped.py): a compute group reads and writes the
  store with no copy.

Other buffers (BatchNorm's int64 batch counter) get blocks of their own.
Optimizer state is laid out like the parameters: for each per-parameter state
key with a tensor of the parameter's shape (Adam's exp_avg and exp_avg_sq,
SGD's momentum_buffer) one flat buffer of blocks, allocated at the first step;
for each scalar key (Adam's step) a (C,) tensor. `fresh[k]` says client k has
no optimizer state (never stepped, or reset after FedAvg): its rows are then
ignored, so a reset costs no write.

Everything lives in memory: at 832 weights per AlexNet bottom, 10,000
clients' weights and Adam moments are 100 MB, so no memory-mapping is needed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from sglr_ray.nodes.optim import make_optimizer


def _blocks(buffer: torch.Tensor, count: int, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Views (count, *shape) of consecutive slices of the flat `buffer`, one per name."""
    views, start = {}, 0
    for name, shape in shapes.items():
        size = count * shape.numel()
        views[name] = buffer[start : start + size].view(count, *shape)
        start += size
    return views


class ClientStates:
    """Weights, buffers and optimizer state of `count` clients of `template`'s structure, all
    starting from `template`'s weights (one initial model handed out to every client)."""

    def __init__(self, template: nn.Module, count: int, optimizer_name: str, lr: float) -> None:
        self.count, self.optimizer_name, self.lr = count, optimizer_name, lr
        self._template = template  # a working model for `module`'s copies; its weights are not read again
        state = template.state_dict()
        self._param_names = [name for name, _ in template.named_parameters()]
        floats = {k: v.shape for k, v in state.items() if v.is_floating_point()}
        dtypes = {v.dtype for k, v in state.items() if k in floats}
        if len(dtypes) > 1:
            raise ValueError(f"a client model's floating tensors have several dtypes {dtypes}")
        device = next(iter(state.values())).device
        dtype = dtypes.pop() if dtypes else torch.get_default_dtype()
        size = count * sum(s.numel() for s in floats.values())
        self.weights = torch.empty(size, dtype=dtype, device=device)  # the one flat buffer
        self.blocks = _blocks(self.weights, count, floats)
        for name, value in state.items():
            if name not in floats:  # int buffers: BatchNorm's batch counter
                self.blocks[name] = torch.empty(count, *value.shape, dtype=value.dtype, device=device)
            self.blocks[name].copy_(value.detach().expand_as(self.blocks[name]))
        self.blocks = {name: self.blocks[name] for name in state}  # state-dict order
        self.fresh = torch.ones(count, dtype=torch.bool)
        self.moments: dict[str, dict[str, torch.Tensor]] = {}  # key -> param name -> (C, *shape)
        self.scalars: dict[str, torch.Tensor] = {}  # key -> (C,): a step count per client
        self.version = 0  # bumped on every change made outside a compute group (nodes/grouped.py)

    @property
    def param_names(self) -> list[str]:
        return self._param_names

    # --- one client's model, optimizer and weights ---------------------------------------

    def module(self, k: int) -> nn.Module:
        """A module of client k whose parameters and buffers are views of its rows: training it
        writes the store. Build one per client being stepped; drop it after."""
        return self.bind(copy.deepcopy(self._template), k)

    @torch.no_grad()
    def bind(self, module: nn.Module, k: int) -> nn.Module:
        """Make `module`'s parameters and buffers views of client k's rows (a scratch module
        can be rebound client after client for evaluation)."""
        params = dict(module.named_parameters())
        for sub_name, sub in module.named_modules():
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    sub._buffers[name] = self.blocks[f"{sub_name}.{name}" if sub_name else name][k]
        for name, param in params.items():
            param.data = self.blocks[name][k]
        return module

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Client k's model state: views of its rows (clone to keep)."""
        return {name: block[k] for name, block in self.blocks.items()}

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor], rows: Sequence[int] | slice) -> None:
        """Write one model state into the clients at `rows` (FedAvg's mean, SSL's hand-over)."""
        if set(state) != set(self.blocks):
            raise ValueError(f"a state of {sorted(state)} for clients of {sorted(self.blocks)}")
        index = torch.as_tensor(rows) if not isinstance(rows, slice) else rows
        for name, block in self.blocks.items():
            block[index] = state[name].to(block.device, block.dtype)
        self.version += 1

    def reset_optimizers(self, rows: Sequence[int] | slice) -> None:
        """Clients at `rows` start from a fresh optimizer at their next step."""
        self.fresh[torch.as_tensor(rows) if not isinstance(rows, slice) else rows] = True
        self.version += 1

    def optimizer(self, k: int, module: nn.Module) -> torch.optim.Optimizer:
        """An optimizer over `module` (from `module(k)`) holding client k's state as views of its
        rows; hand it to `store_optimizer` after stepping (the scalars are copies)."""
        optimizer = make_optimizer(module.parameters(), self.optimizer_name, self.lr)
        if not self.fresh[k]:
            for name, param in module.named_parameters():
                entry = {key: blocks[name][k] for key, blocks in self.moments.items()}
                for key, values in self.scalars.items():
                    entry[key] = values[k].clone()
                optimizer.state[param] = entry
        return optimizer

    @torch.no_grad()
    def store_optimizer(self, k: int, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Keep what `optimizer` (over `module`, client k's) holds now: its moments (copied unless
        they are already views of the rows) and scalars; no state means fresh."""
        entries = [optimizer.state.get(p) for p in module.parameters()]
        if not any(entries):
            self.fresh[k] = True
            self.version += 1
            return
        for name, entry in zip(self._param_names, entries, strict=True):
            for key, value in entry.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    row = self._moment_blocks(key)[name][k]
                    if row.data_ptr() != value.data_ptr():
                        row.copy_(value)
                else:
                    self._scalar_values(key, value)[k] = torch.as_tensor(value)
        self.fresh[k] = False
        self.version += 1

    def _moment_blocks(self, key: str) -> dict[str, torch.Tensor]:
        """The blocks of optimizer state `key`, allocated (one flat buffer) at its first use."""
        if key not in self.moments:
            shapes = {name: self.blocks[name].shape[1:] for name in self._param_names}
            flat = torch.zeros_like(self.weights[: self.count * sum(s.numel() for s in shapes.values())])
            self.moments[key] = _blocks(flat, self.count, shapes)
        return self.moments[key]

    def _scalar_values(self, key: str, like: object) -> torch.Tensor:
        if key not in self.scalars:
            dtype = like.dtype if torch.is_tensor(like) else torch.float64
            self.scalars[key] = torch.zeros(self.count, dtype=dtype)
        return self.scalars[key]

    def store_group_optimizer(
        self, rows: slice, grouped: dict[str, torch.Tensor], state: dict[torch.Tensor, dict]
    ) -> None:
        """Keep a compute group's optimizer state: `state[param]` for each grouped parameter
        `grouped[name]` (clients `rows`, stacked on dim 0) after a step."""
        with torch.no_grad():
            for name, param in grouped.items():
                for key, value in state[param].items():
                    if torch.is_tensor(value) and value.dim() > 0:
                        block = self._moment_blocks(key)[name][rows]
                        if block.data_ptr() != value.data_ptr():
                            block.copy_(value.view_as(block))
                    else:
                        self._scalar_values(key, value)[rows] = torch.as_tensor(value)
        self.fresh[rows] = False

    def group_optimizer_entry(self, rows: slice, name: str, shape: torch.Size) -> dict:
        """The grouped optimizer state of parameter `name` for clients `rows`: views of their moment
        rows, and scalars that must be equal across the group (one step count per grouped tensor)."""
        entry = {key: blocks[name][rows].view(shape) for key, blocks in self.moments.items()}
        for key, values in self.scalars.items():
            part = values[rows]
            if not torch.equal(part, part[:1].expand_as(part)):
                raise ValueError(f"the clients' optimizer {key!r} differs; they cannot step as one")
            entry[key] = part[0].clone()
        return entry
