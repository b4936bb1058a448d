"""When SplitAvg is switched on: every epoch, the first ceil(F*E) or the last ceil(F*E)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

_PHASE_RE = re.compile(r"^(all|(initial|final):(\d*\.?\d+))$")


class PhaseError(ValueError):
    """A phase string that is malformed or out of range."""


@dataclass(frozen=True)
class Phase:
    kind: str  # "all", "initial" or "final"
    fraction: Fraction = Fraction(1)

    @classmethod
    def parse(cls, text: str) -> Phase:
        match = _PHASE_RE.match(str(text).strip())
        if not match:
            raise PhaseError(f"{text!r} is malformed: use 'all', 'initial:F' or 'final:F' with F in (0, 1]")
        if match.group(1) == "all":
            return cls("all")
        # Fraction of the decimal as written: 0.7 is 7/10, not 0.69999..., so ceil(0.7*10) = 7.
        fraction = Fraction(match.group(3))
        if not 0 < fraction <= 1:
            raise PhaseError(f"{text!r}: fraction {match.group(3)} must be in (0, 1]")
        return cls(match.group(2), fraction)

    def epochs_on(self, epochs: int) -> int:
        """How many of `epochs` epochs average: E, or ceil(F*E)."""
        return epochs if self.kind == "all" else math.ceil(self.fraction * epochs)

    def is_on(self, epoch: int, epochs: int) -> bool:
        """Whether averaging is on in `epoch` (0-based) of `epochs`."""
        if self.kind == "initial":
            return epoch < self.epochs_on(epochs)
        if self.kind == "final":
            return epoch >= epochs - self.epochs_on(epochs)
        return True

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}:{float(self.fraction):g}"
