"""Label inference from gradients (Li et al., ICLR 2022), where labels stay on the clients:
`--attack label`, for usl.

In usl the server never sees labels, but it back-propagates the gradients the clients upload,
dL_i/dz_i per sample (Li et al.'s cut-layer gradient). A tap on the server's model
(privacy/base.py, GradientTap) keeps them as they arrive, and an ObservingRule files the
target client's rows by step; usl's code is untouched. Two attacks read them:

- direction (`label_acc`): in each epoch the server knows the label of KNOWN_PER_CLASS
  examples per class (the first rows of each class it observes that epoch, as the model
  drifts); every other row gets the label of the known row it is most cosine-similar to.
  Accuracy over all scored rows; chance is 1 / classes.
- norm (`norm_auc`): Li et al.'s two-party attack scores a sample by its gradient norm. With
  ten classes it ranks each class against the rest; `norm_auc` is the mean one-vs-rest AUC
  (0.5 = no information), and shows how much the norm alone leaks here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sglr_ray.methods.base import Method, RunConfig
from sglr_ray.privacy.base import Attack, Evidence, observed, observing

KNOWN_PER_CLASS = 1


def direction_attack(
    grads: Tensor, labels: Tensor, known_per_class: int = KNOWN_PER_CLASS
) -> tuple[int, int]:
    """(correct, scored): each row of grads (n, d) labelled as its most cosine-similar known row;
    the known rows are the first `known_per_class` of each class and are not scored."""
    known = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        known[torch.nonzero(labels == c).flatten()[:known_per_class]] = True
    unit = F.normalize(grads.flatten(1).double(), dim=1)
    similarity = unit[~known] @ unit[known].T
    guesses = labels[known][similarity.argmax(dim=1)] if known.any() else labels[~known]
    return int((guesses == labels[~known]).sum()), int((~known).sum())


def auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of `scores` for the boolean `positive` (Mann-Whitney, ties 1/2)."""
    pos, neg = scores[positive].double(), scores[~positive].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return float(wins.mean())


def norm_attack(grads: Tensor, labels: Tensor) -> float:
    """Mean one-vs-rest AUC of the per-row gradient norm over the classes present."""
    norms = grads.flatten(1).norm(dim=1)
    values = [auc(norms, labels == c) for c in labels.unique()]
    return float(torch.tensor(values).nanmean())


class LabelInference(Attack):
    name = "label"
    summary = "usl: the server infers the clients' labels from the gradients (norm, direction)"
    metrics = ("label_acc", "norm_auc")

    def applies(self, method: Method) -> str | None:
        if method.client.whole_model or method.client.sends_labels:
            return "whose server already holds the labels (label inference needs usl)"
        return None

    def install(self, method: Method, config: RunConfig) -> Method:
        return observing(method, self.name, tapped=True)

    def recorded(self, server) -> dict:
        return {key: obs.own for key, obs in observed(server, self.name).items()}

    def score(self, evidence: Evidence) -> dict[str, float]:
        correct, scored, norm_aucs = 0, 0, []
        for epoch in sorted({e for e, _ in evidence.recorded}):
            steps = sorted(key for key in evidence.recorded if key[0] == epoch)
            grads = torch.cat([evidence.recorded[key] for key in steps])
            labels = torch.cat([evidence.batch_labels(evidence.client_id, *key) for key in steps])
            hits, rows = direction_attack(grads, labels)
            correct, scored = correct + hits, scored + rows
            norm_aucs.append(norm_attack(grads, labels))
        return {"label_acc": correct / max(scored, 1), "norm_auc": float(torch.tensor(norm_aucs).mean())}


LABEL = LabelInference()
