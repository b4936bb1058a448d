"""Flower's side of benchmarks/flower_peer.py: one FedAvg round in Flower's simulation engine.

Runs with the Python of benchmarks/.flower-venv (`make flower-venv`: flwr 1.42 pins
ray 2.55.1, sglr-ray runs on Ray 2.60), never imported by sglr-ray. It imports
only sglr-ray's pure-torch pieces (the model and the batch helpers, no Ray and no
settings) from the repository root on PYTHONPATH, so both sides train the same
network from the same initial weights on the same batches:

- the partitions come from the .npz that flower_peer.py writes from sglr_ray.data;
- a client trains one local epoch of batch b with a fresh Adam, visiting its
  partition in `epoch_order(seed, client, 0, n)`, as sglr-ray's FL clients do
  (benchmarks/fedavg_client.py, checked against sglr-ray's FL by a unit test);
- FedAvg (Flower's message-API strategy), every client in the round, one round,
  no federated evaluation.

The round's wall time is timed inside the strategy, from configuring the round to
the end of aggregation. Before it, one untimed query to every client starts Flower's
actors and loads the partitions in them, so the round excludes start-up, as
sglr-ray's train time does.

  PYTHONPATH=. benchmarks/.flower-venv/bin/python benchmarks/flower_side.py --data parts.npz --out result.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from benchmarks.fedavg_client import train_client
from sglr_ray.nodes.models import build_client_model  # torch only

MODEL = "alexnet"


@functools.cache
def partitions(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images (C, n, 28, 28) uint8, labels (C, n), settings): loaded once per Ray worker."""
    with np.load(path) as npz:
        return npz["images"], npz["labels"], json.loads(str(npz["settings"]))


client_app = ClientApp()


@client_app.query()
def warm_up(msg: Message, context: Context) -> Message:
    """Untimed: the actor's first call loads the partitions and builds a model, as sglr-ray's
    shards do before their first epoch."""
    _, _, settings = partitions(os.environ["FLOWER_PEER_DATA"])
    build_client_model(MODEL, settings["seed"], full=True)
    return Message(content=RecordDict(), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch of client `partition-id` from the round's global model."""
    client = int(context.node_config["partition-id"])
    images, labels, settings = partitions(os.environ["FLOWER_PEER_DATA"])
    state, loss_sum, samples = train_client(
        msg.content["arrays"].to_torch_state_dict(), images[client], labels[client], client,
        settings["seed"], settings["batch_size"], settings["lr"], MODEL,
    )  # fmt: skip
    content = RecordDict({
        "arrays": ArrayRecord(state),
        "metrics": MetricRecord({"train_loss": loss_sum / samples, "num-examples": samples}),
    })  # fmt: skip
    return Message(content=content, reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that times each training round: configure_train to the end of aggregate_train."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.round_s: dict[int, float] = {}
        self.replies_ok: dict[int, int] = {}
        self._started = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._started = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.replies_ok[server_round] = sum(not reply.has_error() for reply in replies)
        aggregated = super().aggregate_train(server_round, replies)
        self.round_s[server_round] = time.perf_counter() - self._started
        return aggregated


RESULT: dict = {}  # filled by the ServerApp, which runs in a thread of this process
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    _, labels, settings = partitions(os.environ["FLOWER_PEER_DATA"])
    clients = len(labels)
    strategy = TimedFedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients
    )
    nodes = list(grid.get_node_ids())
    queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    if failed := [reply for reply in grid.send_and_receive(queries) if reply.has_error()]:
        raise RuntimeError(f"{len(failed)} of {len(nodes)} clients failed the warm-up: {failed[0].error}")
    initial = build_client_model(MODEL, settings["seed"], full=True)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial.state_dict()), num_rounds=1)
    if strategy.replies_ok.get(1) != clients:
        trained = strategy.replies_ok.get(1, 0)
        raise RuntimeError(f"{trained} of {clients} clients trained (see the log above)")
    RESULT.update(
        train_s=strategy.round_s[1],
        train_loss=float(result.train_metrics_clientapp[1]["train_loss"]),
        samples=int(labels.size),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help=".npz of partitions from flower_peer.py")
    parser.add_argument("--out", required=True, help="JSON file for the result")
    parser.add_argument(
        "--cpus-per-client", type=float, default=1.0,
        help="Ray CPUs per ClientApp actor: 1 runs one single-thread actor per core",
    )  # fmt: skip
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["FLOWER_PEER_DATA"] = os.path.abspath(args.data)  # Ray workers inherit it
    _, labels, _ = partitions(os.environ["FLOWER_PEER_DATA"])
    started = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(labels),
        backend_config={
            "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
            "init_args": {"log_to_driver": False, "include_dashboard": False},
        },
    )
    if "train_s" not in RESULT:
        print("flower_side: the simulation ended without a result (see Flower's log above)", file=sys.stderr)
        return 1
    RESULT.update(wall_s=time.perf_counter() - started, flwr_version=__import__("flwr").__version__,
                  ray_version=__import__("ray").__version__)  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(RESULT, f)
    return 0


if __name__ == "__main__":
    # The apps must come from the importable module, not __main__: Ray's workers unpickle
    # the ClientApp by reference and import it from PYTHONPATH.
    from benchmarks import flower_side

    sys.exit(flower_side.run())
