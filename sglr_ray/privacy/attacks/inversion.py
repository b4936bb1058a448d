"""Model inversion by an honest-but-curious server (SPEC section 4): `--attack inversion`.

The server follows the protocol. After training it queries the target client's frozen
bottom model with auxiliary images it owns (no client's), as the client would answer it
(through the client's defense, if any), trains a decoder from smashed data back to images
(measure/leakage.py's), and reconstructs the target's test images from their smashed data.
Metrics: mse, psnr, ssim of the reconstructions (torchmetrics) and dcor, the distance
correlation between the target's inputs and the smashed data the server sees.
"""

from __future__ import annotations

from sglr_ray.privacy.base import Attack, Evidence
from sglr_ray.privacy.metrics import distance_correlation, reconstruction_metrics

DCOR_SAMPLES = 500  # distance correlation needs O(n^2) memory: a few hundred rows


class Inversion(Attack):
    name = "inversion"
    summary = "honest-but-curious server: a decoder trained on its own images inverts smashed data"
    metrics = ("mse", "psnr", "ssim", "dcor")
    uses_aux = True

    def score(self, evidence: Evidence) -> dict[str, float]:
        originals, reconstructions = evidence.invert(evidence.aux_inputs, evidence.target_inputs)
        k = min(DCOR_SAMPLES, len(evidence.target_inputs))
        inputs = evidence.target_inputs[:k]
        dcor = distance_correlation(inputs, evidence.sent(inputs))
        return {**reconstruction_metrics(originals, reconstructions), "dcor": dcor}


INVERSION = Inversion()
