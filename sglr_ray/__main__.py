"""`python -m sglr_ray ...` is the CLI (the form `ray job submit -- python -m sglr_ray run ...` uses)."""

import sys

from sglr_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
