"""Peer comparison: SGLR written the plain way against this platform's executors.

The plain version is what a single research script does: one process, a
torch DataLoader per client, a Python loop over clients for the forward
pass, one server step on the concatenated batch, split-layer averaging, and
a loop over clients for the backward pass. Same models, data, batch size,
optimizers and thread count as the platform's runs; training samples/s after
one warm-up epoch, all in one run of this script.

  .venv/bin/python -m benchmarks.peer_plain_loop --clients 10 100
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import write_results
from benchmarks.overhead import samples_per_s
from sglr_ray.config import RunConfig
from sglr_ray.data import prepare_data, to_model_input
from sglr_ray.nodes.models import SPLIT_MODELS


def plain_sglr_samples_per_s(config: RunConfig, data, epochs: int) -> float:
    torch.set_num_threads(2)
    split = SPLIT_MODELS[config.model]
    bottoms = [split.build_bottom() for _ in range(config.clients)]
    top = split.build_top()
    # fused, as make_optimizer builds Adam: the plain loop steps as the engine does
    client_opts = [torch.optim.Adam(b.parameters(), lr=config.lr, fused=True) for b in bottoms]
    server_opt = torch.optim.Adam(top.parameters(), lr=config.server_lr, fused=True)
    loaders = [
        DataLoader(TensorDataset(to_model_input(p.images), torch.from_numpy(p.labels)),
                   batch_size=config.batch_size, shuffle=True, drop_last=True)
        for p in data.partitions
    ]  # fmt: skip
    active_size = int(config.phi * config.clients)
    rng = np.random.default_rng(0)

    def epoch() -> int:
        samples = 0
        for batches in zip(*loaders, strict=True):
            smashed = [bottom(x) for bottom, (x, _) in zip(bottoms, batches, strict=True)]
            s = torch.cat([t.detach() for t in smashed]).requires_grad_(True)
            loss = F.cross_entropy(top(s), torch.cat([y for _, y in batches]))
            server_opt.zero_grad()
            loss.backward()
            server_opt.step()
            grads = list((s.grad * config.clients).split(config.batch_size))
            if active_size >= 2:
                active = rng.choice(config.clients, active_size, replace=False)
                mean = torch.stack([grads[i] for i in active]).mean(0)
                for i in active:
                    grads[i] = mean
            for opt, out, grad in zip(client_opts, smashed, grads, strict=True):
                opt.zero_grad()
                out.backward(grad)
                opt.step()
            samples += len(s)
        return samples

    epoch()  # warm-up, as for the platform's executors
    started, samples = time.perf_counter(), sum(epoch() for _ in range(epochs))
    return samples / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    rows = []
    for clients in args.clients:
        config = RunConfig(
            method="sglr", model="alexnet", dataset="synthetic", clients=clients,
            samples_per_client=max(50, 4000 // clients), epochs=args.epochs + 1,
            val_samples=10, test_samples=10, torch_threads=2,
        )  # fmt: skip
        data = prepare_data(config)
        plain = plain_sglr_samples_per_s(config, data, args.epochs)
        local, _ = samples_per_s(config.replace(executor="local"), data, args.epochs)
        remote, _ = samples_per_s(config.replace(executor="ray"), data, args.epochs)
        rows.append({
            "clients": clients, "plain_loop_samples_per_s": plain, "local_samples_per_s": local,
            "ray_samples_per_s": remote, "local_over_plain": local / plain,
            "ray_over_plain": remote / plain,
        })  # fmt: skip
    command = "  .venv/bin/python -m benchmarks.peer_plain_loop " + " ".join(argv or sys.argv[1:])
    write_results(rows, "peer_plain_loop", "SGLR as a plain single-process loop vs this platform", command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
