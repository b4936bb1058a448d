"""Who takes part when: --clients-per-round sampling and --dropout (SPEC section 4).

Both are pure functions of the seed and the ids, so a replayed or resumed epoch,
and the Ray and in-process executors, draw the same clients.

- `round_clients`: K of the C clients, uniformly without replacement, per epoch
  (an epoch is FL's and SFL's round).
- `is_present`: a client misses a step with probability 1 - (1 - P) * a_i,
  P = --dropout and a_i its profile's availability, seeded by (seed, client,
  epoch, step). The split methods draw it per iteration; FL per round (step 0).

What a method does with a missing client (a schedule's `absences` lists what it takes):

- psl, slr, sgl, sglr, cyclesl, gpsl, lsl, sflv1 (the engine's split steps):
  K: only the K clients train this epoch; the others keep their models.
  P: a missing client skips the step and that batch; SplitAvg draws its active
  set, floor(phi * present), from the clients present.
  T: late uploads are counted as sent and dropped; their clients discard the
  step (no backward); SplitAvg draws from the clients in time.
- sfl: as PSL; FedAvg averages the round's K clients, every client takes the mean.
- fl: K: the K clients train and are averaged, every client takes the mean.
  P: a client misses the whole round. T: refused.
- ssl: P: a client skips the steps of its turn it misses. K, T: refused (the
  hand-over chain needs every turn).
- asl: K as PSL; P: a missing client skips that batch. T: refused (no barrier).
- cl, usl: all three refused.
"""

from __future__ import annotations

import numpy as np


def round_clients(seed: int, epoch: int, k: int, num_clients: int) -> list[int]:
    """The clients of an epoch's round: K drawn uniformly without replacement (K = 0: all)."""
    if k == 0 or k >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, epoch, 0x5A3D])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def is_present(seed: int, client: int, epoch: int, step: int, miss_probability: float) -> bool:
    """Whether `client` takes part at (epoch, step), missing with probability `miss_probability`."""
    if miss_probability <= 0:
        return True
    return bool(np.random.default_rng([seed, client, epoch, step, 0xD809]).random() >= miss_probability)


def miss_probability(dropout: float, availability: float) -> float:
    """--dropout P and a profile's availability a: a client is there with probability (1 - P) * a."""
    return 1 - (1 - dropout) * availability
