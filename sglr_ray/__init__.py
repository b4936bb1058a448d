"""sglr-ray: split learning (SGLR, PSL, SFL, SLR, SGL) simulated on Ray actors."""

from sglr_ray.version import __version__

__all__ = ["__version__"]
