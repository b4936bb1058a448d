"""Privacy attacks and defenses for split learning (SPEC section 4), one file each.

`ATTACKS` and `DEFENSES` map the names of --attack and --defense to the objects in
attacks/ and defenses/; nothing else lists them. `check` refuses a name, parameter or
method they do not fit, before any work; `install` returns the run's Method with the
defense around its client role and the attacks' training-time hooks around its server
(config.RunConfig.spec calls it, so the engine never sees a name).

Layers: privacy/ sits above nodes/ (FSHA builds models) and below config (which checks and
installs). The post-training half of an attack runs in execution/attacks.py, which gathers
the `Evidence` (models, images, what the hooks kept on the server) and calls `score`.
"""

from __future__ import annotations

import dataclasses
import math

from sglr_ray.methods.base import Method, RunConfig
from sglr_ray.privacy.attacks.broadcast import BROADCAST
from sglr_ray.privacy.attacks.fsha import FSHA
from sglr_ray.privacy.attacks.inversion import INVERSION
from sglr_ray.privacy.attacks.label import LABEL
from sglr_ray.privacy.base import Attack, DefendedRole, Defense, Evidence
from sglr_ray.privacy.defenses.label_rr import LabelRR
from sglr_ray.privacy.defenses.noise import GaussianNoise
from sglr_ray.privacy.defenses.nopeek import NoPeek
from sglr_ray.settings import ConfigError

__all__ = ["ATTACKS", "DEFENSES", "Attack", "DefendedRole", "Defense", "Evidence", "check", "install",
           "parse_attacks", "parse_defense"]  # fmt: skip

ATTACKS: dict[str, Attack] = {a.name: a for a in (INVERSION, FSHA, LABEL, BROADCAST)}
DEFENSES: dict[str, type[Defense]] = {d.name: d for d in (GaussianNoise, NoPeek, LabelRR)}


def parse_attacks(value: str) -> list[Attack]:
    """--attack NAME[,NAME]: the attacks, in order; ConfigError for an unknown name."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        if name not in ATTACKS:
            raise ConfigError(f"--attack {name!r} is unknown; choose one of: {', '.join(ATTACKS)}")
    return [ATTACKS[n] for n in dict.fromkeys(names)]


def parse_defense(value: str) -> Defense | None:
    """--defense NAME:PARAM: the defense at that strength (None for ''); ConfigError otherwise."""
    if not value:
        return None
    name, _, text = value.partition(":")
    if name not in DEFENSES:
        raise ConfigError(f"--defense {name!r} is unknown; choose one of: {', '.join(DEFENSES)}")
    kind = DEFENSES[name]
    try:
        param = float(text)
    except ValueError:
        raise ConfigError(f"--defense {value!r}: write {name}:{kind.param_name.upper()}, a number") from None
    below = param <= kind.low if kind.low_open else param < kind.low
    if below or param > kind.high or math.isnan(param):
        bound = f"> {kind.low:g}" if kind.low_open else f">= {kind.low:g}"
        raise ConfigError(f"--defense {value!r}: {kind.param_name} must be {bound}, got {param:g}")
    return kind(param)


def check(attack: str, defense: str, method: Method, method_name: str) -> None:
    """ConfigError (one line, naming both) where an attack or defense does not fit the method."""
    for item in (*parse_attacks(attack), parse_defense(defense)):
        if item is None:
            continue
        why = item.applies(method)
        if why:
            flag = "--attack" if isinstance(item, Attack) else "--defense"
            raise ConfigError(f"{flag} {item.name} does not apply to --method {method_name}, {why}")


def install(method: Method, config: RunConfig) -> Method:
    """The run's Method: its client role defended, its server carrying the attacks' hooks."""
    defense = parse_defense(config.defense)
    if defense is not None:
        method = dataclasses.replace(method, client=DefendedRole(method.client, defense))
    for attack in parse_attacks(config.attack):
        method = attack.install(method, config)
    return method
