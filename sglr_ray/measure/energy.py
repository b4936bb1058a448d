"""Energy: measured joules where a meter is readable, and a model that is always there.

Meters (read on the driver's machine, once per epoch around training):
- nvml: the GPU board's total-energy counter (nvidia-ml-py), summed over GPUs;
- rapl: the CPU package counters under /sys/class/powercap (Intel/AMD RAPL);
- none: neither is readable; measured energy is then null, never invented.

Measured joules are attributed to clients and server in proportion to FLOPs.

The model's defaults, and where they come from:
- JOULES_PER_FLOP = 2.05e-11: NVIDIA A100 SXM datasheet, 19.5 TFLOP/s FP32 at
  400 W board power (400 / 19.5e12), i.e. a data-centre GPU at full load.
- JOULES_PER_BIT = 6.45e-7: Aalborg University's mobile-phone measurements of
  Wi-Fi (802.11b/g) transfer energy, parameter A of their E_bit model
  (about 2 Mbit/s); older radios, so an upper-end figure for a phone client.
Both are flags (--joules-per-flop, --joules-per-bit): set them for your hardware.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

JOULES_PER_FLOP = 2.05e-11
JOULES_PER_BIT = 6.45e-7
RAPL_ROOT = Path("/sys/class/powercap")


class EnergyMeter(Protocol):
    source: str

    def read_j(self) -> float | None:
        """Joules since some fixed origin (only differences mean anything), or None."""


class NoMeter:
    source = "none"

    def read_j(self) -> float | None:
        return None


class NvmlMeter:
    source = "nvml"

    def __init__(self) -> None:
        import pynvml  # from nvidia-ml-py

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self._handles:
            raise RuntimeError("NVML sees no GPU")
        self.read_j()  # fails here on boards without the energy counter (pre-Volta)

    def read_j(self) -> float | None:
        millijoules = sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)
        return millijoules / 1000.0


class RaplMeter:
    """Sums the package-level RAPL domains; the counters wrap at max_energy_range_uj."""

    source = "rapl"

    def __init__(self, root: Path = RAPL_ROOT) -> None:
        # Package domains are intel-rapl:N (sub-domains intel-rapl:N:M are inside them).
        self._domains = [Path(d) for d in sorted(glob.glob(str(root / "intel-rapl:*"))) if d.count(":") == 1]
        if not self._domains:
            raise RuntimeError(f"no RAPL package domain under {root}")
        self._ranges = [int((d / "max_energy_range_uj").read_text()) for d in self._domains]
        self._last = [self._raw(d) for d in self._domains]
        self._total_uj = 0

    @staticmethod
    def _raw(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    def read_j(self) -> float | None:
        for i, domain in enumerate(self._domains):
            now = self._raw(domain)
            delta = now - self._last[i]
            self._total_uj += delta if delta >= 0 else delta + self._ranges[i]  # wrapped
            self._last[i] = now
        return self._total_uj / 1e6


def open_meter() -> EnergyMeter:
    """The first readable meter of nvml, rapl; NoMeter when neither is."""
    for meter_class in (NvmlMeter, RaplMeter):
        try:
            return meter_class()
        except Exception as ex:
            log.info("energy meter %s unavailable: %s", meter_class.source, ex)
    return NoMeter()


def attribute(energy_j: float | None, flops: list[int]) -> list[float | None]:
    """Split measured joules over actors in proportion to their FLOPs."""
    total = sum(flops)
    if energy_j is None or total == 0:
        return [None] * len(flops)
    return [energy_j * f / total for f in flops]
