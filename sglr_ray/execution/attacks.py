"""The post-training half of the privacy attacks (privacy/): gather each attack's Evidence
about the target client (--leakage-client) and score it, on either executor.

The target's model comes from its shard, what an attack's hook kept comes from the server
(`recorded_on`), and everything else is recomputed here from the seed: the server's own
images (the spare training images no client holds), the target's test images, and the
labels of the target's batches (nodes/batches.py draws them from (seed, client, epoch)).
Rows: (attack, client_id, metric, value); a defense's accountant adds rows `accounting`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sglr_ray import privacy
from sglr_ray.config import RunConfig
from sglr_ray.data import PreparedData, to_model_input
from sglr_ray.epochs import Executor
from sglr_ray.execution.engine import Engine
from sglr_ray.measure import leakage
from sglr_ray.methods.roles import StepContext
from sglr_ray.nodes.batches import BatchDrawer
from sglr_ray.nodes.client import ClientShard, client_partitions
from sglr_ray.nodes.codec import Codec, parse_codec
from sglr_ray.nodes.models import ModelParts
from sglr_ray.privacy.base import DEFENSE_SALT


class SentView(nn.Module):
    """The target's bottom model as the server sees it answer: through the client's defense (with
    noise from a stream of its own, seeded by the run and the client), then through --compress's
    codec, as an upload travels in training (nodes/split_shard.py), so compression counts as a
    defense wherever it changes what the server decodes."""

    def __init__(
        self, bottom: nn.Module, defense: privacy.Defense | None, ctx: StepContext, codec: Codec | None = None
    ) -> None:
        super().__init__()
        self.bottom, self.defense, self.codec = bottom, defense, codec or Codec()
        self.generator = ctx.generator(DEFENSE_SALT + 2)

    def forward(self, x: Tensor) -> Tensor:
        s = self.bottom(x)
        s = s if self.defense is None else self.defense.sent(s, self.generator)
        return self.codec.roundtrip(s)


def recorded_on(server: Any, attack: str) -> Any:
    """Run on the server: what `attack`'s training-time hook kept there."""
    return privacy.ATTACKS[attack].recorded(server)


def target_bottom(ex: Executor, config: RunConfig) -> nn.Module:
    """The target client's smashing model as trained, in eval mode."""
    client, role = config.leakage_client, config.spec.client
    model = role.build_client(ModelParts(config.model, config.seed))
    model.load_state_dict(
        ex.get(ex.call(Engine(ex, config).shard_of(client), ClientShard.model_state, client))
    )
    return role.smashing_model(model).eval()


def gather_evidence(ex: Executor, config: RunConfig, data: PreparedData) -> privacy.Evidence:
    """Everything an attack may read after training, minus what its own hook kept."""
    client, defense = config.leakage_client, privacy.parse_defense(config.defense)
    after_training = StepContext(config.seed, client, config.epochs, 0)  # an epoch no training drew
    sent = SentView(target_bottom(ex, config), defense, after_training, parse_codec(config.compress))
    partitions, drawer = client_partitions(config, data), BatchDrawer(config, torch.device("cpu"))

    def invert(aux: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        _, originals, reconstructions = leakage.measure_leakage(
            sent, aux, targets, client, epochs=config.leakage_epochs, seed=config.seed
        )
        return originals, reconstructions

    def apply_sent(x: Tensor) -> Tensor:
        with torch.no_grad():
            return sent.eval()(x)

    return privacy.Evidence(
        config=config, client_id=client, bottom=sent.bottom, sent=apply_sent,
        aux_inputs=to_model_input(data.spare.images[: config.leakage_aux_samples]),
        target_inputs=to_model_input(data.test.images),
        to_image=lambda x: leakage.crop_to_client_image(leakage.to_unit_range(x)),
        client_view=leakage.crop_to_client_image, invert=invert,
        batch_labels=lambda c, epoch, step: drawer.batch(c, partitions[c], epoch, step)[1],
    )  # fmt: skip


def run_attacks(ex: Executor, config: RunConfig, data: PreparedData) -> list[dict[str, Any]]:
    """Score every --attack against the target client; rows for the `privacy` table."""
    evidence, rows = gather_evidence(ex, config, data), []
    for attack in privacy.parse_attacks(config.attack):
        evidence.recorded = ex.get(ex.call(ex.server, recorded_on, attack.name))
        for metric, value in attack.score(evidence).items():
            rows.append({"attack": attack.name, "client_id": config.leakage_client, "metric": metric,
                         "value": float(value)})  # fmt: skip
    defense = privacy.parse_defense(config.defense)
    for metric, value in (defense.accounting(config) if defense else {}).items():
        rows.append({"attack": "accounting", "client_id": -1, "metric": f"{defense.name}_{metric}",
                     "value": float(value)})  # fmt: skip
    return rows
