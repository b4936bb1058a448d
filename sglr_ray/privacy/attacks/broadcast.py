"""What a curious client learns about the OTHER clients' batches from the split-layer gradient it
receives: `--attack broadcast`, for every split method.

Under SplitAvg (SGL, SGLR, usl with --phi) the active clients A of a step all receive one tensor,
G_avg = (1/m) sum_{j in A} G_j with m = |A|: row r is the mean of the r-th sample's gradient of
every active client, so it carries the other members' samples. Under PSL (and SGLR with
phi = 0, or a step where the target is not drawn) a client receives only its own G_i, which
says nothing of the others. The target (--leakage-client) is honest-but-curious: it follows the
protocol, knows its own labels and their class frequencies (its prior), and m (the message says
whether it is the broadcast; |A| = floor(phi * C) is public). It does not have the server's
model, so it cannot compute anyone's gradient; it learns the classes' gradient directions from
what it receives, and with --compress it sees what the codec decodes.

1. class directions, per epoch as the model drifts (`epoch_directions`): a received row with
   the target's own label y is a . mu in expectation, mu (K, d) the mean gradient row of each
   class, a = e_y for its own gradient and e_y / m + (m - 1) / m * prior for a broadcast (the
   others' labels follow the prior); least squares over the epoch's rows gives mu.
2. the guess (`guess_rows`): m * row - mu[y] is the sum of the other m - 1 members' gradient
   rows; its non-negative decomposition over mu names the class that weighs most. A sample the
   model already fits has a gradient near zero, so a row is dominated by the others' hardest
   sample: the guess names one label per row, not a full histogram (whose estimates, tried on
   Fashion-MNIST, did no better than the prior). Where the target received no broadcast, it can
   only guess the prior's most frequent class. No step with another client beside the target
   (SSL's turns; LSL, whose server sends nothing down): every metric is nan.

Metrics, over the steps in which other clients took part (their labels from `batch_labels`):
- `label_acc`: the share of the other clients' samples whose label the guess for their row
  names; `chance_acc`: the same for the prior's guess (about 1 / K). PSL scores exactly chance.
- `row_acc`: the share of rows where the guess names a label some other client holds at that
  row; `row_chance`: the same for the prior's guess (1 - (1 - 1/K)^(C-1) for balanced classes).
- `shared_frac`: the share of those steps in which the target received a broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sglr_ray.methods.base import Method, RunConfig
from sglr_ray.nodes.models import NUM_CLASSES
from sglr_ray.privacy.base import Attack, Evidence, Observation, observed, observing

NNLS_ITERATIONS = 300


def class_directions(rows: Tensor, coefficients: Tensor) -> Tensor:
    """mu (K, d) solving rows (n, d) ~= coefficients (n, K) @ mu in least squares."""
    return torch.linalg.lstsq(coefficients.double(), rows.double()).solution


def nonnegative_weights(targets: Tensor, basis: Tensor, iterations: int = NNLS_ITERATIONS) -> Tensor:
    """W (n, K) >= 0 minimising ||targets - W @ basis||^2 row by row (projected gradient descent,
    step 1 / the Gram matrix's largest eigenvalue, so it never diverges)."""
    basis, targets = basis.double(), targets.double()
    gram, linear = basis @ basis.T, targets @ basis.T
    step = 1.0 / float(torch.linalg.eigvalsh(gram).max().clamp(min=1e-30))
    weights = torch.zeros(len(targets), len(basis), dtype=torch.float64)
    for _ in range(iterations):
        weights = (weights - step * (weights @ gram - linear)).clamp(min=0.0)
    return weights


def guess_rows(received: Tensor, own_labels: Tensor, mu: Tensor, m: Tensor | int) -> Tensor:
    """One class (rows,) per row of broadcasts (rows, d), row r averaged over m[r] clients: the
    class with the largest weight in the non-negative decomposition of m * row - mu[own label],
    the other members' part of the row."""
    m = torch.as_tensor(m, dtype=torch.float64).reshape(-1, 1)
    return nonnegative_weights(m * received.double() - mu[own_labels], mu).argmax(dim=1)


def held_by_others(labels: list[Tensor], rows: int, classes: int) -> Tensor:
    """(rows, classes) counts: how many of the other clients hold class c at row r of their batch
    (a client whose batch is shorter holds nothing at the rows it lacks)."""
    counts = torch.zeros(rows, classes, dtype=torch.float64)
    for y in labels:
        n = min(rows, len(y))
        counts[torch.arange(n), y[:n]] += 1
    return counts


def epoch_directions(
    observations: list[Observation], own: list[Tensor], prior: Tensor, target: int
) -> Tensor:
    """The class directions mu (K, d) from one epoch's received rows, own gradients and broadcasts
    alike: a received row is a . mu in expectation, a = e_y / m + (m - 1) / m * prior."""
    rows, coefficients = [], []
    for obs, labels in zip(observations, own, strict=True):
        received, m = (obs.shared, len(obs.shared_to)) if target in obs.shared_to else (obs.own, 1)
        onehot = torch.nn.functional.one_hot(labels, len(prior)).double()
        rows.append(received.double())
        coefficients.append(onehot / m + (m - 1) / m * prior)
    return class_directions(torch.cat(rows), torch.cat(coefficients))


@dataclass
class Tally:
    """Hits of the target's guesses (and of the prior's) against the other clients' labels."""

    named: float = 0.0  # other clients' samples whose label the guess for their row names
    blind: float = 0.0  # the same for the prior's guess
    rows_named: int = 0  # rows where the guess names a label some other client holds there
    rows_blind: int = 0
    samples: int = 0
    rows: int = 0

    def add(self, held: Tensor, guess: Tensor, blind: Tensor) -> None:
        at = torch.arange(len(held))
        named, chance = held[at, guess], held[at, blind]
        self.named, self.blind = self.named + float(named.sum()), self.blind + float(chance.sum())
        self.rows_named += int((named > 0).sum())
        self.rows_blind += int((chance > 0).sum())
        self.samples, self.rows = self.samples + int(held.sum()), self.rows + len(held)

    def metrics(self) -> dict[str, float]:
        return {
            "label_acc": self.named / self.samples, "chance_acc": self.blind / self.samples,
            "row_acc": self.rows_named / self.rows, "row_chance": self.rows_blind / self.rows,
        }  # fmt: skip


class BroadcastInference(Attack):
    name = "broadcast"
    summary = "curious client: infers the other clients' labels from the split-layer gradient it receives"
    metrics = ("label_acc", "chance_acc", "row_acc", "row_chance", "shared_frac")

    def install(self, method: Method, config: RunConfig) -> Method:
        return observing(method, self.name, received=True)

    def recorded(self, server) -> dict[tuple[int, int], Observation]:
        return observed(server, self.name)

    def score(self, evidence: Evidence) -> dict[str, float]:
        target = evidence.client_id
        steps = {key: obs for key, obs in evidence.recorded.items() if len(obs.clients) > 1}
        if not steps:  # nobody beside the target in any step (SSL's turns; LSL sends nothing down)
            return dict.fromkeys(self.metrics, float("nan"))
        own = {key: evidence.batch_labels(target, *key) for key in steps}
        prior = torch.bincount(torch.cat(list(own.values())), minlength=NUM_CLASSES).double()
        prior = prior / prior.sum()
        tally, shared = Tally(), {key for key, obs in steps.items() if target in obs.shared_to}
        for epoch in sorted({e for e, _ in steps}):
            keys = sorted(k for k in steps if k[0] == epoch)
            mu = epoch_directions([steps[k] for k in keys], [own[k] for k in keys], prior, target)
            guesses = guess_broadcasts({k: steps[k] for k in keys if k in shared}, own, mu)
            for key in keys:
                others = [evidence.batch_labels(c, *key) for c in steps[key].clients if c != target]
                held = held_by_others(others, len(own[key]), NUM_CLASSES)
                blind = torch.full((len(held),), int(prior.argmax()))  # the prior's guess: no listening
                tally.add(held, guesses.get(key, blind), blind)
        return {**tally.metrics(), "shared_frac": len(shared) / len(steps)}


def guess_broadcasts(
    broadcasts: dict[tuple[int, int], Observation], own: dict[tuple[int, int], Tensor], mu: Tensor
) -> dict[tuple[int, int], Tensor]:
    """guess_rows for every broadcast the target received in an epoch, in one decomposition."""
    if not broadcasts:
        return {}
    keys = list(broadcasts)
    sizes = [len(own[k]) for k in keys]
    members = torch.cat(
        [torch.full((n,), len(broadcasts[k].shared_to)) for k, n in zip(keys, sizes, strict=True)]
    )
    received = torch.cat([broadcasts[k].shared for k in keys])
    guesses = guess_rows(received, torch.cat([own[k] for k in keys]), mu, members).split(sizes)
    return dict(zip(keys, guesses, strict=True))


BROADCAST = BroadcastInference()
