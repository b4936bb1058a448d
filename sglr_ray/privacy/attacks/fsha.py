"""Feature-space hijacking (FSHA; Pasquini, Ateniese and Bernaschi, CCS 2021): `--attack fsha`.

A malicious server. Whenever the target client (--leakage-client) takes part in a step, the
server sends it no task gradient. With its own auxiliary images (the spare training images no
client holds, the inversion attack's) it trains, one step per training step:

- a pilot encoder f~ and a decoder f~^-1 as an autoencoder, MSE(f~^-1(f~(x_aux)), x_aux). The
  pilot is a freshly drawn copy of the client's part of the model, so its output has the
  smashed data's shape and range for any model and cut; the decoder is the honest decoder's
  (privacy/decoder.py), so the two attacks differ only in how the client's model was trained;
- a critic D telling the target's smashed data f(x) from f~(x_aux);

and sends the target dL_f/ds for L_f = mean D(f(x)), the critic's "looks like the pilot"
loss on the target's smashed data. The client's own optimizer thus steers its bottom model f
into the pilot's feature space, which the decoder inverts. The critic is a Wasserstein critic
with a gradient penalty, the paper's choice: in a standalone loop of these models on ResNet-16
a plain GAN discriminator (cross-entropy) left the target's reconstruction error swinging
between 0.025 and 0.16 over 300 steps, while with the critic it came down to 0.014-0.026 by
steps 500-700, still swinging (docs/guides/privacy.md).

The other clients are treated honestly: the method's server step runs on the whole batch as
it would (its loss, its top model, every other client's gradient, SplitAvg's draws), and only
the target's delivery changes, to a unicast of the hijacking gradient (`HijackingRule`).

After training: f~^-1(f(x)) for the target's test images, through the client's defense
(Evidence.sent), scored on the image the client holds: mse, psnr, ssim, named as inversion's.

Limits: usl is refused (its server answers through its middle model outside the server step
this attack wraps); the hijacker's models are not in checkpoints, so an epoch replayed after a
lost actor continues (or, on a restarted server, restarts) the attack; the server reads its
auxiliary images from the dataset itself (data.prepare_data), as the driver does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sglr_ray.data import prepare_data
from sglr_ray.methods.base import Delivery, Method, RunConfig, ServerBatch, ServerStep, SplitRule, TopModels
from sglr_ray.methods.roles import StepContext
from sglr_ray.privacy.base import Attack, Evidence
from sglr_ray.privacy.decoder import build_decoder
from sglr_ray.privacy.metrics import reconstruction_metrics

PILOT_SALT, DECODER_SALT, CRITIC_SALT = 0xF5A0, 0xF5A1, 0xF5A2  # seed + salt: the server's own models
DRAW_SALT = 0xF5A3  # ctx.generator(DRAW_SALT): the aux batch and the penalty's mixing weights
AUTOENCODER_LR = 1e-3  # Adam, pilot and decoder together
CRITIC_LR = 1e-3  # Adam (betas 0.5/0.9, as in WGAN-GP)
# Weight of (|grad D| - 1)^2 on mixes of pilot and client features: the paper's 500, where the
# usual 10 left the target's reconstruction error swinging twice as far from step to step.
GRADIENT_PENALTY = 500.0
_CHUNK = 256  # inference batch when scoring


def build_critic(smashed_shape: tuple[int, ...]) -> nn.Module:
    """D: smashed data (n, *smashed_shape) -> one score per sample. Image-like smashed data gets
    two stride-2 convolutions (the paper's critic is convolutional), anything else an MLP. No
    batch normalisation: the gradient penalty is taken per sample."""
    if len(smashed_shape) == 3:
        channels, height, width = smashed_shape
        return nn.Sequential(
            nn.Conv2d(channels, 64, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(128 * math.ceil(height / 4) * math.ceil(width / 4), 1),
        )
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(smashed_shape), 256), nn.LeakyReLU(0.2), nn.Linear(256, 1)
    )


@torch.no_grad()
def in_chunks(fn: Any, inputs: Tensor) -> Tensor:
    """fn over `inputs` in chunks of _CHUNK rows, without gradients."""
    return torch.cat([fn(inputs[i : i + _CHUNK]) for i in range(0, len(inputs), _CHUNK)])


class Hijacker:
    """The malicious server's pilot, decoder and critic, their optimizers and its aux images."""

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        parts, self.device = config.model_parts, device
        shape, inputs = tuple(parts.smashed_shape), tuple(parts.input_shape)
        self.pilot = parts.seeded(parts.draw_bottom, PILOT_SALT).to(device).train()
        self.decoder = parts.seeded(lambda: build_decoder(shape, inputs), DECODER_SALT).to(device).train()
        self.critic = parts.seeded(lambda: build_critic(shape), CRITIC_SALT).to(device).train()
        self.autoencoder_opt = torch.optim.Adam(
            [*self.pilot.parameters(), *self.decoder.parameters()], lr=AUTOENCODER_LR
        )
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=CRITIC_LR, betas=(0.5, 0.9))
        spare = prepare_data(config).spare  # the same images Evidence.aux_inputs holds
        self.aux = spare.inputs(slice(config.leakage_aux_samples)).to(device)
        self.aux_images = spare.codec.to_unit_range(self.aux.clone())  # the decoder's targets
        self.steps = 0

    def gradient(self, smashed: Tensor, ctx: StepContext) -> Tensor:
        """One FSHA iteration on the target's smashed data; returns dL_f/ds for the target.
        As in the paper's code, all three losses use the models as they were at the step's
        start, and then every model steps."""
        generator = ctx.generator(DRAW_SALT)
        n = len(smashed)
        index = torch.randint(len(self.aux), (n,), generator=generator).to(self.device)
        x_aux, target = self.aux[index], self.aux_images[index]
        s = smashed.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(s).mean(), s)  # L_f: the critic's score of s

        pilot_features = self.pilot(x_aux)
        autoencoder_loss = F.mse_loss(self.decoder(pilot_features), target)
        self.autoencoder_opt.zero_grad(set_to_none=True)
        autoencoder_loss.backward()

        fake, real = pilot_features.detach(), s.detach()
        mix_weight = torch.rand(n, *[1] * (s.dim() - 1), generator=generator).to(self.device)
        mix = (mix_weight * fake + (1 - mix_weight) * real).requires_grad_(True)
        (mix_grad,) = torch.autograd.grad(self.critic(mix).sum(), mix, create_graph=True)
        penalty = ((mix_grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        # The critic scores client features high and pilot features low; the client lowers its score.
        critic_loss = self.critic(fake).mean() - self.critic(real).mean() + GRADIENT_PENALTY * penalty
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.autoencoder_opt.step()
        self.critic_opt.step()
        self.steps += 1
        return grad.to(smashed.dtype)

    def record(self) -> dict[str, Any]:
        """What scoring needs, as plain tensors (it crosses from the server actor)."""
        decoder = {k: v.detach().cpu().clone() for k, v in self.decoder.state_dict().items()}
        return {"decoder": decoder, "steps": self.steps}


class HijackingRule:
    """The method's SplitRule, except that the target receives the hijacking gradient alone
    (a unicast) in the steps where the server step computed one; everyone else is served by the
    method's rule on the honest gradients, the target's included, as the protocol says."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.inner: SplitRule | None = None  # the method's rule, built with the server
        self.hijacker: Hijacker | None = None  # built at the target's first step, on the server
        self.pending: Tensor | None = None  # this step's gradient for the target

    def wrap(self, inner: ServerStep) -> ServerStep:
        """`inner`, plus one FSHA iteration on the target's rows when it takes part."""

        def step(server: TopModels, batch: ServerBatch, epoch: int, step: int) -> tuple[float, dict]:
            rows = dict(batch.rows())
            target = batch.smashed[rows[self.client_id]].detach() if self.client_id in rows else None
            loss, grads = inner(server, batch, epoch, step)
            if target is not None:
                if self.hijacker is None:
                    self.hijacker = Hijacker(server.config, target.device)
                ctx = StepContext(server.config.seed, self.client_id, epoch, step)
                self.pending = self.hijacker.gradient(target, ctx)
            return loss, grads

        return step

    def deliver(self, grads: dict[int, Tensor], epoch: int, step: int) -> Delivery:
        delivery, pending, self.pending = self.inner.deliver(grads, epoch, step), self.pending, None
        if pending is None or self.client_id not in grads:
            return delivery
        shared_to = [c for c in delivery.shared_to if c != self.client_id]
        own = {**delivery.own, self.client_id: pending}
        return Delivery(own, delivery.shared if shared_to else None, shared_to)


def hijacking_rule(server: Any) -> HijackingRule:
    """The HijackingRule among the rules wrapped around the server's."""
    rule = server.rule
    while rule is not None:
        if isinstance(rule, HijackingRule):
            return rule
        rule = getattr(rule, "inner", None)
    raise LookupError("the server carries no FSHA hook")


class FeatureSpaceHijacking(Attack):
    name = "fsha"
    summary = "malicious server: steers the target's bottom model into a feature space it can invert"
    metrics = ("mse", "psnr", "ssim")
    uses_aux = True

    def applies(self, method: Method) -> str | None:
        why = super().applies(method)
        if why:
            return why
        if not method.client.receives_gradient:
            return "whose server sends its clients no gradient to hijack them with"
        if not method.client.sends_labels:
            return "whose server answers through its middle model, outside the server step FSHA wraps"
        return None

    def install(self, method: Method, config: RunConfig) -> Method:
        """The method with one HijackingRule as both its server step's wrapper and its SplitRule:
        the server reads both from one spec (`Server.__init__`), so the gradient a step computes
        for the target reaches that step's delivery."""
        hijack, inner_rule = HijackingRule(config.leakage_client), method.rule

        def rule(run: RunConfig) -> SplitRule:
            hijack.inner = inner_rule(run)
            return hijack

        return dataclasses.replace(method, rule=rule, server_step=hijack.wrap(method.server_step))

    def recorded(self, server: Any) -> dict[str, Any] | None:
        hijacker = hijacking_rule(server).hijacker
        return None if hijacker is None else hijacker.record()

    def score(self, evidence: Evidence) -> dict[str, float]:
        if evidence.recorded is None:  # the target never took part in a step: nothing was hijacked
            return dict.fromkeys(self.metrics, float("nan"))
        inputs = evidence.target_inputs
        smashed = in_chunks(evidence.sent, inputs)
        decoder = build_decoder(tuple(smashed.shape[1:]), tuple(inputs.shape[1:]))
        decoder.load_state_dict(evidence.recorded["decoder"])
        images = in_chunks(decoder.eval(), smashed)
        return reconstruction_metrics(evidence.to_image(inputs), evidence.client_view(images))


FSHA = FeatureSpaceHijacking()
